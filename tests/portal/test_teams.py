"""Team assignments: students form teams by invitation, staff set them (page and roster CSV), and a
team's submission is every member's: who may see it, the team's quota, window, late days and grace
days, its leaderboard row, and each member's grade."""

from __future__ import annotations

import html
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone
from django.utils.html import strip_tags

from portal.access import can_view_submission
from portal.analytics.selectors import analytics_for_assignment
from portal.courses.gradebook import grade_of
from portal.courses.models import AuditEntry, Team, TeamInvitation, TeamMember
from portal.courses.roster import import_roster
from portal.courses.services import extension_grant
from portal.courses.teams import TeamRefused, team_create, team_invitation_answer, team_invite, team_leave, team_set
from portal.leaderboards.models import LeaderboardEntry
from portal.leaderboards.selectors import leaderboard_for_viewer
from portal.leaderboards.services import leaderboard_record_job
from portal.submissions.models import Job, Submission
from portal.submissions.services import (
    SubmissionRefused,
    submission_create,
    submission_disqualify,
    submission_mark_final,
)
from portal.submissions.standing import standing_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

CODE = {"linear_op.py": "x = 1\n"}


@pytest.fixture
def team_op(cast, custom_op, django_capture_on_commit_callbacks):
    """custom_op done in teams of up to 2; alice and bob are team Ada, carol is in none."""
    custom_op.team_size = 2
    custom_op.save()
    team = team_set(course=cast["course"], name="Ada", usernames=["alice", "bob"], by=cast["ines"])
    return {**cast, "assignment": custom_op, "team": team}


def grade(submission: Submission, score: float) -> Job:
    job = submission.jobs.get()
    tests = [{"name": "t", "points": 1.0, "outcome": "failed" if score < 100 else "passed", "message": ""}]
    Job.objects.filter(pk=job.pk).update(
        state="succeeded", score=score, metric=score / 10, result={"tests": tests}, finished_at=timezone.now()
    )
    job.refresh_from_db()
    leaderboard_record_job(job=job)
    return job


def text(response) -> str:
    return " ".join(html.unescape(strip_tags(response.content.decode())).split())


def test_students_form_a_team_by_invitation_within_the_size_limit(cast, custom_op):
    course = cast["course"]
    with pytest.raises(TeamRefused, match="no team assignment"):
        team_create(course=course, name="Solo", creator=cast["alice"])
    custom_op.team_size = 2
    custom_op.save()
    team = team_create(course=course, name="  Turing   Tribe ", creator=cast["alice"])
    assert team.name == "Turing Tribe"
    with pytest.raises(TeamRefused, match="called 'turing tribe' already"):
        team_create(course=course, name="turing tribe", creator=cast["bob"])
    with pytest.raises(TeamRefused, match="tariq is not a student"):
        team_invite(team=team, inviter=cast["alice"], username="tariq")
    with pytest.raises(TeamRefused, match="No student 'outsider'"):
        team_invite(team=team, inviter=cast["alice"], username="outsider")
    with pytest.raises(TeamRefused, match="Only a member"):
        team_invite(team=team, inviter=cast["bob"], username="carol")
    invitation = team_invite(team=team, inviter=cast["alice"], username="bob")
    with pytest.raises(TeamRefused, match="at most 2 members here, counting open invitations"):
        team_invite(team=team, inviter=cast["alice"], username="carol")
    with pytest.raises(TeamRefused, match="not yours"):
        team_invitation_answer(invitation=invitation, user=cast["carol"], accept=True)
    assert team_invitation_answer(invitation=invitation, user=cast["bob"], accept=True) == team
    assert sorted(team.members.values_list("user__username", flat=True)) == ["alice", "bob"]
    assert not TeamInvitation.objects.exists()

    team_leave(course=course, user=cast["bob"])  # nothing submitted yet: free to go
    team_leave(course=course, user=cast["alice"])
    assert not Team.objects.exists()  # left empty with nothing submitted: gone


def test_a_student_in_no_team_is_told_why_and_a_team_submission_is_every_member_s(team_op):
    assignment, alice, bob, carol = team_op["assignment"], team_op["alice"], team_op["bob"], team_op["carol"]
    with pytest.raises(SubmissionRefused, match="done in teams of up to 2: form a team or accept an invitation"):
        submission_create(student=carol, assignment=assignment, files=CODE)
    submission = submission_create(student=bob, assignment=assignment, files=CODE)
    assert submission.team == team_op["team"] and submission.student == bob
    assert can_view_submission(user=alice, submission=submission)
    assert not can_view_submission(user=carol, submission=submission)
    with pytest.raises(TeamRefused, match="Team Ada has submitted work"):
        team_leave(course=team_op["course"], user=alice)


def test_a_member_s_assignment_page_lists_the_team_s_submissions(client, team_op):
    submission = submission_create(student=team_op["bob"], assignment=team_op["assignment"], files=CODE)
    client.force_login(team_op["alice"])
    page = client.get(reverse("courses:assignment", args=[team_op["course"].slug, team_op["assignment"].slug]))
    assert reverse("submissions:detail", args=[submission.pk]) in page.content.decode()
    assert client.get(reverse("submissions:detail", args=[submission.pk])).status_code == 200
    client.force_login(team_op["carol"])
    assert client.get(reverse("submissions:detail", args=[submission.pk])).status_code == 404


def test_quota_window_and_leaderboard_row_are_the_team_s(team_op):
    assignment, alice, bob = team_op["assignment"], team_op["alice"], team_op["bob"]
    assignment.max_submissions = 2
    assignment.save()
    first = submission_create(student=alice, assignment=assignment, files=CODE)
    second = submission_create(student=bob, assignment=assignment, files=CODE)
    assert standing_for(assignment=assignment, student=alice).quota.left == 0
    with pytest.raises(SubmissionRefused, match="Team Ada has used all 2 submissions this assignment allows"):
        submission_create(student=alice, assignment=assignment, files=CODE)

    grade(first, 70.0)
    grade(second, 90.0)
    entries = LeaderboardEntry.objects.filter(assignment=assignment)
    assert [(e.team.name, e.student.username, e.score) for e in entries] == [("Ada", "bob", 90.0)]
    rows = leaderboard_for_viewer(assignment=assignment, user=team_op["carol"]).rows
    assert [(r["rank"], r["student"], r["score"]) for r in rows] == [(1, "team Ada", 90.0)]

    # each member's grade is the team's; disqualifying bob's result rebuilds the team's row from alice's
    assert grade_of(assignment=assignment, student=alice).final == 90.0
    assert grade_of(assignment=assignment, student=bob).final == 90.0
    assert grade_of(assignment=assignment, student=team_op["carol"]).final is None
    # analytics count the team's result once per member, as the gradebook does
    analytics = analytics_for_assignment(assignment=assignment)
    assert (analytics.graded, analytics.metric.values, analytics.with_tests) == (2, 2, 2)
    assert analytics.score_histogram[-1].count == 2 and analytics.metric.median == 9.0
    assert [(t.name, t.failures) for t in analytics.failing_tests] == [("t", 2)]
    submission_disqualify(submission=second, by=team_op["ines"], reason="copied")
    assert [(e.team.name, e.score) for e in LeaderboardEntry.objects.filter(assignment=assignment)] == [("Ada", 70.0)]
    assert grade_of(assignment=assignment, student=bob).final == 70.0


def test_an_extension_to_one_member_covers_the_team_and_late_days_spend_every_member_s_grace(team_op):
    assignment, alice, bob, course = team_op["assignment"], team_op["alice"], team_op["bob"], team_op["course"]
    course.grace_days = 3
    course.save()
    assignment.late_policy = "grace"
    assignment.due_at = timezone.now() - timedelta(days=1, hours=1)  # 2 days late now
    assignment.save()
    late = submission_create(student=bob, assignment=assignment, files=CODE)
    assert late.late_days == 2 and late.team == team_op["team"]
    assert standing_for(assignment=assignment, student=alice).grace_left == 1  # alice's bank paid too

    extension_grant(
        assignment=assignment,
        students=[alice],
        due_at=timezone.now() + timedelta(days=1),
        reason="medical note",
        granted_by=team_op["ines"],
    )
    late.refresh_from_db()
    assert late.late_days == 0  # bob submitted it, alice's extension covers the team
    standing = standing_for(assignment=assignment, student=bob)
    assert standing.extension.student == alice and standing.grace_left == 3


def test_a_team_larger_than_the_assignment_takes_cannot_submit(team_op):
    team_set(course=team_op["course"], name="Ada", usernames=["alice", "bob", "carol"], by=team_op["ines"])
    with pytest.raises(SubmissionRefused, match="Team Ada has 3 members; this assignment takes teams of up to 2"):
        submission_create(student=team_op["carol"], assignment=team_op["assignment"], files=CODE)


def test_staff_set_teams_on_the_teams_page_and_it_is_audited(client, team_op):
    client.force_login(team_op["ines"])
    url = reverse("courses:teams", args=[team_op["course"].slug])
    response = client.post(url, {"name": "Babbage", "members": "bob, carol"})
    assert response.status_code == 302
    assert list(TeamMember.objects.filter(team__name="Babbage").values_list("user__username", flat=True)) == [
        "bob",
        "carol",
    ]
    assert list(TeamMember.objects.filter(team__name="Ada").values_list("user__username", flat=True)) == ["alice"]
    entry = AuditEntry.objects.filter(action="teams").first()
    assert entry.summary == "Team Babbage: bob, carol (was nobody)" and entry.actor == team_op["ines"]
    page = text(client.get(url))
    assert "Ada alice" in page and "Babbage bob, carol" in page

    refused = text(client.post(url, {"name": "Ada", "members": "alice tariq"}, follow=True))
    assert "Not students of this course: tariq. Nothing was changed." in refused
    client.force_login(team_op["tariq"])  # TAs do not set teams
    assert client.get(url).status_code == 404


def test_the_roster_csv_s_team_column_puts_students_in_teams(team_op):
    course = team_op["course"]
    data = (
        b"username,email,role,team\n"
        b"alice,alice@example.edu,student,Ada\n"
        b"carol,carol@example.edu,student,Ada\n"
        b"dave,dave@example.edu,student,Hopper\n"
        b"tariq,tariq@example.edu,ta,Hopper\n"
    )
    preview = import_roster(course, data, dry_run=True)
    assert [line.describe() for line in preview.lines] == [
        "line 2: alice: unchanged",
        "line 3: carol: update (team '' -> 'Ada')",
        "line 4: dave: create (new account)",
        "line 5: tariq: refused: a ta is in no team: teams are of students",
    ]
    import_roster(course, data)
    members = {t.name: sorted(t.members.values_list("user__username", flat=True)) for t in course.teams.all()}
    assert members == {"Ada": ["alice", "bob", "carol"], "Hopper": ["dave"]}
    assert import_roster(course, data, dry_run=True).summary() == "created 0, updated 0, unchanged 3, refused 1"
    # a team's name in another letter case is the same team
    again = import_roster(course, b"username,email,role,team\ncarol,carol@example.edu,student,ADA\n", dry_run=True)
    assert again.summary() == "created 0, updated 0, unchanged 1, refused 0"


def test_students_use_the_course_page_to_form_a_team_and_answer_an_invitation(client, team_op):
    course, url = team_op["course"], reverse("courses:team", args=[team_op["course"].slug])
    dave = UserFactory(username="dave")
    course.enrollments.create(user=dave, role="student")
    client.force_login(team_op["carol"])
    page = text(client.post(url, {"action": "create", "name": "Lovelace"}, follow=True))
    assert "Team Lovelace is formed: invite your teammates." in page
    page = text(client.post(url, {"action": "invite", "username": "dave"}, follow=True))
    assert "dave is invited; they accept on this page." in page and "dave is invited Withdraw" in page

    client.force_login(dave)
    page = text(client.get(reverse("courses:course", args=[course.slug])))
    assert "carol invites you into team Lovelace" in page
    invitation = TeamInvitation.objects.get(invitee=dave)
    page = text(client.post(url, {"action": "accept", "invitation": invitation.pk}, follow=True))
    assert "You are in team Lovelace." in page and "Team Lovelace: carol, dave." in page

    client.force_login(team_op["tariq"])  # staff have no team
    assert client.post(url, {"action": "create", "name": "TAs"}).status_code == 404
    assert not User.objects.filter(team_memberships__team__name="TAs").exists()


def test_a_team_member_marks_the_team_s_final_submission(team_op):
    assignment, alice, bob = team_op["assignment"], team_op["alice"], team_op["bob"]
    assignment.counts = "marked"
    assignment.save()
    first = submission_create(student=alice, assignment=assignment, files=CODE)
    second = submission_create(student=bob, assignment=assignment, files=CODE)
    submission_mark_final(submission=first, user=bob)
    submission_mark_final(submission=second, user=alice)
    assert list(Submission.objects.filter(marked_final=True)) == [second]
    with pytest.raises(SubmissionRefused, match="Only its author"):
        submission_mark_final(submission=second, user=team_op["carol"])

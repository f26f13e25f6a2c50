"""What each viewer sees on a leaderboard: nicknames for students (real names for staff), and in a
course that freezes leaderboards, the final ranking of what was submitted by the due time."""

from __future__ import annotations

import html
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import strip_tags

from portal.courses.services import extension_grant
from portal.leaderboards.consumers import leaderboard_rows_for_viewer
from portal.leaderboards.selectors import leaderboard_for_viewer
from portal.leaderboards.services import leaderboard_rebuild
from portal.submissions.models import Job, Submission
from portal.submissions.services import submission_disqualify

pytestmark = pytest.mark.django_db


def graded(assignment, student, score, *, at):
    submission = Submission.objects.create(assignment=assignment, student=student)
    Submission.objects.filter(pk=submission.pk).update(created_at=at)
    Job.objects.create(submission=submission, seed=1, lab_version=1, state="succeeded", score=score, finished_at=at)
    leaderboard_rebuild(assignment=assignment, student_id=student.pk)
    return submission


def names(assignment, user) -> list[str]:
    return [row["student"] for row in leaderboard_for_viewer(assignment=assignment, user=user).rows]


def test_students_see_nicknames_and_staff_see_who_is_behind_them(client, cast, custom_op):
    now = timezone.now()
    graded(custom_op, cast["alice"], 90.0, at=now)
    graded(custom_op, cast["bob"], 80.0, at=now)
    client.force_login(cast["alice"])
    url = reverse("courses:nickname", args=[cast["course"].slug])
    done = html.unescape(client.post(url, {"nickname": "  Speedy   Gonzales "}, follow=True).content.decode())
    assert "Leaderboards show you as Speedy Gonzales (the staff still see your username)." in done
    assert names(custom_op, cast["bob"]) == ["Speedy Gonzales", "bob"]
    assert names(custom_op, cast["tariq"]) == ["alice (Speedy Gonzales)", "bob"]
    assert [r["student"] for r in leaderboard_rows_for_viewer(assignment_id=custom_op.pk, user=cast["carol"])] == [
        "Speedy Gonzales",
        "bob",
    ]
    page = client.get(reverse("leaderboards:leaderboard", args=[cast["course"].slug, custom_op.slug]))
    assert "Speedy Gonzales" in page.content.decode() and ">alice<" not in page.content.decode()

    client.force_login(cast["carol"])
    for taken, why in [
        ("BOB", "'BOB' is taken in this course; choose another."),
        ("speedy gonzales", "'speedy gonzales' is taken in this course; choose another."),
        ("<script>", "Use up to 30 letters, digits, spaces, dots, dashes or underscores."),
    ]:
        assert why in html.unescape(client.post(url, {"nickname": taken}, follow=True).content.decode())
    assert cast["course"].enrollments.get(user=cast["carol"]).nickname == ""
    client.force_login(cast["tariq"])
    assert client.post(url, {"nickname": "TA"}).status_code == 404  # staff have no leaderboard row


def test_a_frozen_leaderboard_shows_students_the_ranking_at_the_due_time(client, cast, custom_op):
    course = cast["course"]
    course.freeze_leaderboards = True
    course.save()
    due = timezone.now() - timedelta(hours=2)
    custom_op.due_at, custom_op.late_policy = due, "penalty"
    custom_op.save()
    graded(custom_op, cast["alice"], 50.0, at=due - timedelta(hours=1))
    graded(custom_op, cast["bob"], 70.0, at=due - timedelta(minutes=5))
    graded(custom_op, cast["alice"], 100.0, at=due + timedelta(hours=1))  # late: not in the final ranking
    cheat = graded(custom_op, cast["carol"], 99.0, at=due - timedelta(hours=1))
    submission_disqualify(submission=cheat, by=cast["ines"], reason="copied")

    board = leaderboard_for_viewer(assignment=custom_op, user=cast["carol"])
    assert board.final and [(r["student"], r["score"]) for r in board.rows] == [("bob", 70.0), ("alice", 50.0)]
    staff = leaderboard_for_viewer(assignment=custom_op, user=cast["ines"])
    assert not staff.final  # staff see the live ranking, the disqualified result left out
    assert [(r["student"], r["score"]) for r in staff.rows] == [("alice", 100.0), ("bob", 70.0)]
    client.force_login(cast["bob"])
    page = strip_tags(
        client.get(reverse("leaderboards:leaderboard", args=[course.slug, custom_op.slug])).content.decode()
    )
    assert "Final ranking: " in page and "Frozen at the due time" in page

    course.freeze_leaderboards = False
    course.save()
    assert names(custom_op, cast["bob"])[0] == "alice"  # not frozen: the live ranking


def test_the_final_ranking_keeps_what_a_student_with_an_extension_submitted_by_their_own_due_time(cast, custom_op):
    course = cast["course"]
    course.freeze_leaderboards = True
    course.save()
    due = timezone.now() - timedelta(hours=3)
    custom_op.due_at, custom_op.late_policy = due, "penalty"
    custom_op.save()
    extension_grant(
        assignment=custom_op,
        students=[cast["bob"]],
        due_at=due + timedelta(hours=2),
        reason="medical note",
        granted_by=cast["ines"],
    )
    graded(custom_op, cast["alice"], 60.0, at=due - timedelta(hours=1))
    graded(custom_op, cast["alice"], 100.0, at=due + timedelta(hours=1))  # late for alice
    graded(custom_op, cast["bob"], 80.0, at=due + timedelta(hours=1))  # on time for bob
    graded(custom_op, cast["bob"], 95.0, at=due + timedelta(hours=2, minutes=30))  # late for bob too
    board = leaderboard_for_viewer(assignment=custom_op, user=cast["carol"])
    assert board.final and [(r["student"], r["score"]) for r in board.rows] == [("bob", 80.0), ("alice", 60.0)]

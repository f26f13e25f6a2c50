"""Grades out: the submission that counts, the gradebook page (sort, section filter, overrides),
its CSV export from the page and from ``manage.py grades export``, and disqualified results."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone
from django.utils.html import strip_tags

from portal.courses.models import AuditEntry, GradeOverride
from portal.leaderboards.models import LeaderboardEntry
from portal.leaderboards.services import leaderboard_rebuild
from portal.submissions.models import Job, Submission

pytestmark = pytest.mark.django_db


def graded(assignment, student, score, *, hours_ago=0.0, late_days=0, state="succeeded"):
    submission = Submission.objects.create(
        assignment=assignment, student=student, late_days=late_days, is_late=late_days > 0
    )
    Submission.objects.filter(pk=submission.pk).update(created_at=timezone.now() - timedelta(hours=hours_ago))
    Job.objects.create(
        submission=submission, seed=1, lab_version=1, state=state, score=score, finished_at=timezone.now()
    )
    return submission


@pytest.fixture
def term(cast, custom_op):
    """custom_op with a 10 %/day penalty; alice 60 then 80; bob 90 two days late; carol nothing."""
    custom_op.late_policy, custom_op.late_penalty_per_day = "penalty", 10
    custom_op.save()
    course = custom_op.course
    course.enrollments.filter(user__username__in=["alice", "bob"]).update(section="A")
    course.enrollments.filter(user__username="carol").update(section="B")
    cast["alice"].email = "=cmd|' /C calc'!A0@example.edu"  # a formula, were it not quoted
    cast["alice"].save()
    subs = {
        "alice-60": graded(custom_op, cast["alice"], 60.0, hours_ago=3),
        "alice-80": graded(custom_op, cast["alice"], 80.0, hours_ago=2),
        "alice-error": graded(custom_op, cast["alice"], 100.0, hours_ago=1, state="error"),  # given back
        "bob-90": graded(custom_op, cast["bob"], 90.0, late_days=2),
    }
    return {**cast, "subs": subs, "assignment": custom_op}


def text(response) -> str:
    return html.unescape(strip_tags(response.content.decode()))


def test_the_gradebook_shows_final_scores_and_exports_them(client, term):
    course, slug = term["course"], term["assignment"].slug
    client.force_login(term["tariq"])  # TAs read the gradebook
    page = text(client.get(reverse("courses:gradebook", args=[course.slug])))
    assert "72" in page and "2d late −20%" in page
    export = client.get(reverse("courses:gradebook_csv", args=[course.slug]))
    assert export["Content-Disposition"] == 'attachment; filename="aisys-grades.csv"'
    assert export.content.decode().splitlines() == [
        f"username,email,section,{slug}",
        "alice,'=cmd|' /C calc'!A0@example.edu,A,80",
        "bob,bob@example.edu,A,72",
        "carol,carol@example.edu,B,",
    ]
    only_b = client.get(reverse("courses:gradebook_csv", args=[course.slug]), {"section": "B"})
    assert only_b.content.decode().splitlines()[1:] == ["carol,carol@example.edu,B,"]


def test_the_gradebook_sorts_and_filters_by_section(client, term):
    course, slug = term["course"], term["assignment"].slug
    client.force_login(term["ines"])
    url = reverse("courses:gradebook", args=[course.slug])

    def order(**params):
        return re.findall(r'data-student="([^"]+)"', client.get(url, params).content.decode())

    assert order(sort=slug) == ["alice", "bob", "carol"]  # 80, 72, none
    assert order(sort=f"-{slug}") == ["bob", "alice", "carol"]  # lowest first; no grade stays last
    assert order(sort="late_days") == ["bob", "alice", "carol"]
    assert order(section="A", sort="-username") == ["bob", "alice"]


def test_an_instructor_overrides_a_score_with_a_reason(client, term):
    course, assignment = term["course"], term["assignment"]
    client.force_login(term["ines"])
    url = reverse("courses:gradebook", args=[course.slug])
    data = {"student": "carol", "assignment": assignment.slug, "score": "55", "reason": "paper submission"}
    done = text(client.post(url, data, follow=True))
    assert "carol on" in done and "set to 55." in done and "override" in done
    export = client.get(reverse("courses:gradebook_csv", args=[course.slug])).content.decode()
    assert "carol,carol@example.edu,B,55" in export
    entry = AuditEntry.objects.get(action="grade_override")
    assert (entry.actor_name, entry.data["score"], entry.data["reason"]) == ("ines", 55.0, "paper submission")
    refused = text(client.post(url, {**data, "student": "tariq"}))
    assert "tariq is not a student of this course." in refused
    client.post(url, {**data, "score": "", "reason": "found the original"})
    assert not GradeOverride.objects.exists()
    client.force_login(term["tariq"])
    assert client.post(url, data).status_code == 404  # TAs do not change grades
    assert not GradeOverride.objects.exists()


def test_the_command_exports_the_same_csv(term, tmp_path, capsys):
    slug = term["assignment"].slug
    call_command("grades", "export", "aisys", "--assignment", slug)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"username,email,section,{slug}" and out[2] == "bob,bob@example.edu,A,72"
    target = tmp_path / "grades.csv"
    call_command("grades", "export", "aisys", "--output", str(target))
    assert target.read_text().splitlines() == out
    assert "3 students written to" in capsys.readouterr().err
    with pytest.raises(CommandError, match="aisys has no assignment 'nope' \\(it has: custom-op\\)"):
        call_command("grades", "export", "aisys", "--assignment", "nope")


def test_a_student_marks_the_submission_that_counts_while_the_window_is_open(client, term):
    assignment, subs = term["assignment"], term["subs"]
    assignment.counts = "marked"
    assignment.save()
    client.force_login(term["alice"])
    page = text(client.get(reverse("courses:assignment", args=[assignment.course.slug, assignment.slug])))
    assert "80/100 from #" in page  # nothing marked: the latest graded one
    mark = reverse("submissions:mark_final", args=[subs["alice-60"].pk])
    done = text(client.post(mark, follow=True))
    assert f"Submission #{subs['alice-60'].pk} is the one that counts." in done
    page = text(client.get(reverse("courses:assignment", args=[assignment.course.slug, assignment.slug])))
    assert f"60/100 from #{subs['alice-60'].pk}" in page
    client.post(reverse("submissions:mark_final", args=[subs["alice-80"].pk]))
    assert list(Submission.objects.filter(marked_final=True).values_list("pk", flat=True)) == [subs["alice-80"].pk]

    client.force_login(term["bob"])
    assert client.post(mark).status_code == 404  # not his
    assignment.due_at = timezone.now() - timedelta(days=3)
    assignment.cutoff_at = timezone.now() - timedelta(days=1)
    assignment.save()
    own = reverse("submissions:mark_final", args=[subs["bob-90"].pk])
    closed = text(client.post(own, follow=True))
    assert "the submission that counts is fixed." in closed
    assert not Submission.objects.filter(student=term["bob"], marked_final=True).exists()


def test_an_instructor_disqualifies_a_result_and_the_student_sees_why(client, term):
    course, assignment, subs = term["course"], term["assignment"], term["subs"]
    for submission in subs.values():
        leaderboard_rebuild(assignment=assignment, student_id=submission.student_id)
    best = LeaderboardEntry.objects.get(student=term["alice"])
    assert best.job.submission_id == subs["alice-80"].pk
    url = reverse("submissions:disqualify", args=[subs["alice-80"].pk])

    client.force_login(term["tariq"])
    assert client.post(url, {"reason": "x"}).status_code == 404  # TAs do not disqualify
    client.force_login(term["ines"])
    assert "Say why" in text(client.post(url, {"reason": "  "}, follow=True))
    client.post(url, {"reason": "hard-coded the hidden outputs"})
    entry = LeaderboardEntry.objects.get(student=term["alice"])
    assert (entry.job.submission_id, entry.score) == (subs["alice-60"].pk, 60.0)
    export = client.get(reverse("courses:gradebook_csv", args=[course.slug])).content.decode()
    assert export.splitlines()[1].endswith(",A,60")
    audited = AuditEntry.objects.get(action="disqualify")
    assert audited.data == {
        "assignment": assignment.slug,
        "submission": subs["alice-80"].pk,
        "student": "alice",
        "disqualified": True,
        "reason": "hard-coded the hidden outputs",
    }

    client.force_login(term["alice"])
    page = text(client.get(reverse("submissions:detail", args=[subs["alice-80"].pk])))
    assert "Disqualified by the course staff on" in page and ": hard-coded the hidden outputs." in page
    assert "Disqualify this result" not in page
    assert client.post(url, {"action": "reinstate"}).status_code == 404  # nor do students

    client.force_login(term["ines"])
    client.post(url, {"action": "reinstate"})
    assert LeaderboardEntry.objects.get(student=term["alice"]).score == 80.0
    assert Submission.objects.get(pk=subs["alice-80"].pk).disqualified_reason == ""
    assert AuditEntry.objects.filter(action="disqualify").count() == 2

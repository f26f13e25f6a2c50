"""Deadlines, late work, extensions and quotas, through the pages students and staff use: what a
student is told before submitting, what is refused (storing nothing), what staff change."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import strip_tags

from portal.courses.models import AuditEntry, Extension
from portal.courses.services import assignment_create, extension_grant
from portal.submissions.models import Job, Submission
from portal.submissions.services import SubmissionRefused, submission_create

CODE = {"linear_op.py": "x = 1\n"}
FORMAT = "%Y-%m-%dT%H:%M"


def page(client, assignment) -> str:
    url = reverse("courses:assignment", args=[assignment.course.slug, assignment.slug])
    return html.unescape(client.get(url).content.decode())


def submit(client, assignment):
    url = reverse("submissions:submit", args=[assignment.course.slug, assignment.slug])
    return client.post(url, {"code": "x = 1\n"})


def local(delta: timedelta) -> str:
    return timezone.localtime(timezone.now() + delta).strftime(FORMAT)


@pytest.fixture
def late_op(custom_op):
    """custom_op, due a day and a half ago."""
    custom_op.opens_at = timezone.now() - timedelta(days=5)
    custom_op.due_at = timezone.now() - timedelta(days=1, hours=12)
    custom_op.save()
    return custom_op


def test_a_quota_is_shown_before_and_refuses_after_storing_nothing(client, cast, custom_op):
    custom_op.max_submissions = 2
    custom_op.save()
    client.force_login(cast["alice"])
    assert "2 of 2 left" in page(client, custom_op)
    assert submit(client, custom_op).status_code == 302
    assert submit(client, custom_op).status_code == 302
    text = page(client, custom_op)
    assert "0 of 2 left" in text and "You have used all 2 submissions this assignment allows" in text
    refused = submit(client, custom_op)
    assert refused.status_code == 400
    assert "You have used all 2 submissions" in html.unescape(refused.content.decode())
    assert Submission.objects.filter(student=cast["alice"]).count() == 2
    # a grading that ended in an infrastructure error (retries spent) gives its submission back
    Job.objects.filter(pk=Submission.objects.filter(student=cast["alice"]).first().jobs.get().pk).update(state="error")
    assert "1 of 2 left" in page(client, custom_op)
    assert submit(client, custom_op).status_code == 302
    # staff are exempt
    for _ in range(3):
        submission_create(student=cast["tariq"], assignment=custom_op, files=CODE)


def test_the_rate_limit_says_when_the_next_submission_is_allowed(client, cast, custom_op):
    custom_op.submissions_per_hour = 1
    custom_op.save()
    first = submission_create(student=cast["alice"], assignment=custom_op, files=CODE)
    # half an hour ago: the assertions below hold however long the test itself takes (the exact
    # minutes are policies.quota_for's, tested on their own in test_policies.py)
    submitted = timezone.now() - timedelta(minutes=30)
    Submission.objects.filter(pk=first.pk).update(created_at=submitted)
    client.force_login(cast["alice"])
    text = page(client, custom_op)
    next_at = (submitted + timedelta(hours=1)).strftime("%H:%M UTC")
    assert f"1 of 1 used this hour, next allowed at {next_at}" in strip_tags(text)
    assert re.search(r"At most 1 submissions an hour: the next one is allowed in \d+ minutes?\.", text)
    with pytest.raises(SubmissionRefused, match=r"the next one is allowed in \d+ minute"):
        submission_create(student=cast["alice"], assignment=custom_op, files=CODE)
    Submission.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(hours=2))
    assert submission_create(student=cast["alice"], assignment=custom_op, files=CODE).pk


def test_a_ta_grants_an_extension_and_only_that_student_may_submit_late(client, cast, late_op):
    client.force_login(cast["tariq"])
    url = reverse("courses:extensions", args=[late_op.course.slug])
    data = {"assignment": late_op.slug, "students": "alice", "due_at": local(timedelta(days=2)), "reason": "flu"}
    done = html.unescape(client.post(url, data, follow=True).content.decode())
    assert f"{late_op.title}: due" in done and "for 1 (alice)" in done
    extension = Extension.objects.get()
    assert (extension.student, extension.reason, extension.granted_by) == (cast["alice"], "flu", cast["tariq"])

    client.force_login(cast["alice"])
    text = page(client, late_op)
    assert "extended" in text and "(flu)" in text
    assert submit(client, late_op).status_code == 302
    client.force_login(cast["bob"])
    refused = submit(client, late_op)
    assert "this assignment does not accept late submissions" in html.unescape(refused.content.decode())
    assert list(Submission.objects.values_list("student__username", flat=True)) == ["alice"]
    entry = AuditEntry.objects.get(action="extension_grant")
    assert (entry.actor_name, entry.data["students"], entry.data["reason"]) == ("tariq", ["alice"], "flu")


def test_an_extension_for_a_whole_section_and_its_revocation(client, cast, late_op):
    course = late_op.course
    course.enrollments.filter(user__username__in=["alice", "bob"]).update(section="A")
    course.enrollments.filter(user__username="carol").update(section="B")
    client.force_login(cast["ines"])
    url = reverse("courses:extensions", args=[course.slug])
    data = {"assignment": late_op.slug, "section": "A", "due_at": local(timedelta(days=1)), "reason": "lab outage"}
    client.post(url, data)
    assert sorted(Extension.objects.values_list("student__username", flat=True)) == ["alice", "bob"]
    listing = html.unescape(client.get(url).content.decode())
    assert listing.count("lab outage") == 2

    # late days follow the student's due time, both ways
    submission = Submission.objects.create(assignment=late_op, student=cast["alice"])
    Submission.objects.filter(pk=submission.pk).update(created_at=timezone.now())
    extension = Extension.objects.get(student=cast["alice"])
    client.post(url, {"action": "revoke", "extension": extension.pk})
    submission.refresh_from_db()
    assert (submission.is_late, submission.late_days) == (True, 2)
    assert not Extension.objects.filter(student=cast["alice"]).exists()
    assert AuditEntry.objects.filter(action="extension_revoke").count() == 1


def test_an_extension_must_name_students_of_the_course(client, cast, late_op):
    client.force_login(cast["ines"])
    url = reverse("courses:extensions", args=[late_op.course.slug])
    base = {"assignment": late_op.slug, "due_at": local(timedelta(days=1)), "reason": "r"}
    text = html.unescape(client.post(url, {**base, "students": "alice outsider tariq"}).content.decode())
    assert "Not students of this course: outsider, tariq." in text
    text = html.unescape(client.post(url, base).content.decode())
    assert "Name the students, or choose a section (one of the two)." in text
    backwards = {**base, "students": "alice", "cutoff_at": local(timedelta(hours=1))}
    assert "The cutoff cannot come before the new due time." in html.unescape(
        client.post(url, backwards).content.decode()
    )
    assert not Extension.objects.exists()
    client.force_login(cast["alice"])
    assert client.get(url).status_code == 404


def test_grace_days_are_spent_visibly_and_refused_beyond_the_bank(client, cast, late_op):
    course = late_op.course
    course.grace_days = 3
    course.save()
    late_op.late_policy = "grace"
    late_op.save()
    client.force_login(cast["alice"])
    text = page(client, late_op)
    assert "3 of 3 left" in text and "is 2 days late: spends 2 more grace days" in text
    assert submit(client, late_op).status_code == 302
    assert Submission.objects.get().late_days == 2
    course_page = html.unescape(client.get(reverse("courses:course", args=[course.slug])).content.decode())
    assert "Grace days: 1 of 3 left (2 spent)." in course_page
    assert submit(client, late_op).status_code == 302  # the same late day again: nothing more to spend
    other = assignment_create(
        course=course,
        lab=late_op.lab,
        slug="again",
        opens_at=timezone.now() - timedelta(days=9),
        due_at=timezone.now() - timedelta(days=2, hours=1),
        late_policy="grace",
    )
    refused = html.unescape(submit(client, other).content.decode())
    assert "This submission would be 3 days late and needs 3 more grace days; you have 1 left." in refused
    assert Submission.objects.filter(assignment=other).count() == 0


def test_a_late_penalty_is_shown_on_the_submission(client, cast, late_op):
    late_op.late_policy, late_op.late_penalty_per_day = "penalty", 15
    late_op.save()
    client.force_login(cast["alice"])
    assert "is 2 days late: 30% off its score" in page(client, late_op)
    response = submit(client, late_op)
    detail = html.unescape(client.get(response.url).content.decode())
    assert "2 days late: 30% off" in detail


def test_a_cutoff_closes_late_work(client, cast, late_op):
    late_op.late_policy, late_op.cutoff_at = "penalty", timezone.now() - timedelta(hours=1)
    late_op.save()
    client.force_login(cast["alice"])
    refused = html.unescape(submit(client, late_op).content.decode())
    assert "(the hard cutoff); nothing more is accepted." in refused
    assert not Submission.objects.exists()
    extension_grant(
        assignment=late_op,
        students=[cast["alice"]],
        due_at=timezone.now() + timedelta(hours=1),
        reason="r",
        granted_by=cast["ines"],
    )
    assert submit(client, late_op).status_code == 302


def test_times_are_shown_in_the_course_time_zone(client, cast, custom_op):
    course = custom_op.course
    client.force_login(cast["ines"])
    url = reverse("courses:course_settings", args=[course.slug])
    bad = {"title": course.title, "time_zone": "Mars/Olympus", "grace_days": 0}
    assert "is not a time zone" in html.unescape(client.post(url, bad).content.decode())
    client.post(url, {**bad, "time_zone": "Asia/Tokyo", "grace_days": 2})
    course.refresh_from_db()
    assert (course.time_zone, course.grace_days) == ("Asia/Tokyo", 2)
    due = timezone.localtime(custom_op.due_at, course.tz).strftime("%Y-%m-%d %H:%M JST")
    client.force_login(cast["alice"])
    text = page(client, custom_op)
    assert f'datetime="{custom_op.due_at.isoformat()}">{due}</time>' in text
    entry = AuditEntry.objects.get(action="course_settings")
    assert entry.summary == "Settings changed: time_zone = Asia/Tokyo, grace_days = 2"
    client.force_login(cast["tariq"])
    assert client.get(url).status_code == 404


def test_the_audit_log_lists_staff_actions_for_instructors_only(client, cast, custom_op):
    client.force_login(cast["ines"])
    edit = reverse("courses:staff_assignment_edit", args=[custom_op.course.slug, custom_op.slug])
    data = {
        "title": custom_op.title,
        "slug": custom_op.slug,
        "opens_at": local(timedelta(hours=-1)),
        "due_at": local(timedelta(days=3)),
        "is_visible": "on",
        "max_submissions": "5",
    }
    assert client.post(edit, data).status_code == 302
    log = html.unescape(client.get(reverse("courses:audit", args=[custom_op.course.slug])).content.decode())
    assert "ines" in log and f"{custom_op.title} (custom_op) changed (opens_at, due_at, max_submissions)" in log
    client.force_login(cast["tariq"])
    assert client.get(reverse("courses:audit", args=[custom_op.course.slug])).status_code == 404

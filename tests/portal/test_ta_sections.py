"""A course whose TAs see only their own section: submissions (pages, job status, live events),
the gradebook and extensions are limited to that section's students; instructors see everyone."""

from __future__ import annotations

import html

import pytest
from django.urls import reverse

from portal.access import can_view_submission, section_scope
from portal.courses.models import Extension
from portal.submissions.services import submission_create

CODE = {"linear_op.py": "x = 1\n"}


@pytest.fixture
def sections(cast, custom_op):
    course = cast["course"]
    course.tas_see_own_section = True
    course.save()
    course.enrollments.filter(user__username__in=["alice", "tariq"]).update(section="A")
    course.enrollments.filter(user__username__in=["bob", "carol"]).update(section="B")
    return {
        name: submission_create(student=cast[name], assignment=custom_op, files=CODE) for name in ("alice", "carol")
    }


def test_a_section_ta_sees_their_section_only(client, cast, custom_op, sections):
    course = cast["course"]
    assert section_scope(course=course, user=cast["tariq"]) == "A"
    assert section_scope(course=course, user=cast["ines"]) is None
    client.force_login(cast["tariq"])
    alice, carol = sections["alice"], sections["carol"]
    assert client.get(reverse("submissions:detail", args=[alice.pk])).status_code == 200
    assert client.get(reverse("submissions:detail", args=[carol.pk])).status_code == 404
    assert client.get(reverse("submissions:job_status", args=[carol.jobs.get().pk])).status_code == 404
    listing = client.get(reverse("courses:staff_submissions", args=[course.slug, custom_op.slug])).content.decode()
    assert f">{alice.pk}</a>" in listing and f">{carol.pk}</a>" not in listing
    book = client.get(reverse("courses:gradebook", args=[course.slug]), {"section": "B"}).content.decode()
    assert 'data-student="alice"' in book and 'data-student="carol"' not in book
    export = client.get(reverse("courses:gradebook_csv", args=[course.slug])).content.decode()
    assert [line.split(",")[0] for line in export.splitlines()[1:]] == ["alice"]

    url = reverse("courses:extensions", args=[course.slug])
    data = {"assignment": custom_op.slug, "due_at": "2030-01-01T12:00", "reason": "r", "students": "carol"}
    refused = html.unescape(client.post(url, data).content.decode())
    assert "Not students of section A of this course: carol." in refused
    client.post(url, {**data, "students": "alice"})
    assert list(Extension.objects.values_list("student__username", flat=True)) == ["alice"]

    # the course's instructors, and the same TA in a course without the rule, see everyone
    assert can_view_submission(user=cast["ines"], submission=carol)
    course.tas_see_own_section = False
    course.save()
    assert can_view_submission(user=cast["tariq"], submission=carol)


def test_the_setting_is_the_instructors(client, cast, custom_op):
    client.force_login(cast["ines"])
    course = cast["course"]
    url = reverse("courses:course_settings", args=[course.slug])
    data = {"title": course.title, "time_zone": "UTC", "grace_days": 0, "tas_see_own_section": "on"}
    client.post(url, data)
    course.refresh_from_db()
    assert course.tas_see_own_section
    assert course.audit.get().summary == "Settings changed: tas_see_own_section = True"
    client.force_login(cast["tariq"])
    assert client.post(url, {**data, "tas_see_own_section": ""}).status_code == 404

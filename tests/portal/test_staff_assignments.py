"""Assigning labs from the staff pages: an instructor offers a published lab with its window,
and changes it later, without Django admin."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from labs.catalog import LABS_ROOT
from portal.catalog.models import Lab
from portal.catalog.services import lab_sync_all
from portal.courses.models import Assignment
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
FORMAT = "%Y-%m-%dT%H:%M"


@pytest.fixture
def labs(db):
    lab_sync_all(root=LABS_ROOT)
    return {lab.slug: lab for lab in Lab.objects.all()}


def _when(**delta) -> str:
    return timezone.localtime(timezone.now() + timedelta(**delta)).strftime(FORMAT)


def _url(course) -> str:
    return reverse("courses:staff_assignments", args=[course.slug])


def test_an_instructor_assigns_a_lab_and_students_see_it(client, cast, labs):
    course = cast["course"]
    client.force_login(cast["ines"])
    course_page = client.get(reverse("courses:course", args=[course.slug])).content.decode()
    assert f'href="{_url(course)}"' in course_page
    data = {"lab": labs["custom_op"].pk, "opens_at": _when(hours=-1), "due_at": _when(days=7), "is_visible": "on"}
    done = client.post(_url(course), data, follow=True).content.decode()
    assignment = Assignment.objects.get(course=course)
    assert (assignment.slug, assignment.title, assignment.lab.slug) == (
        "custom-op",
        labs["custom_op"].title,
        "custom_op",
    )
    assert f"{assignment.title} is assigned, due" in done
    assert (assignment.due_at - timezone.now()) > timedelta(days=6)

    client.force_login(cast["alice"])
    page = client.get(reverse("courses:course", args=[course.slug])).content.decode()
    assert assignment.title in page and "Roster" not in page and "Assignments</a>" not in page
    assert client.get(reverse("courses:assignment", args=[course.slug, "custom-op"])).status_code == 200


def test_a_window_that_ends_before_it_opens_or_a_taken_slug_is_refused(client, cast, labs):
    course = cast["course"]
    client.force_login(cast["ines"])
    backwards = {"lab": labs["autodiff"].pk, "opens_at": _when(days=2), "due_at": _when(days=1)}
    page = client.post(_url(course), backwards).content.decode()
    assert "The due time must come after the opening time." in page
    first = {"lab": labs["autodiff"].pk, "slug": "hw1", "opens_at": _when(hours=-1), "due_at": _when(days=1)}
    client.post(_url(course), first)
    again = client.post(_url(course), {**first, "lab": labs["custom_op"].pk}).content.decode()
    assert "The course has an assignment &#x27;hw1&#x27; already; choose another." in again
    assert list(Assignment.objects.filter(course=course).values_list("slug", flat=True)) == ["hw1"]


def test_an_instructor_moves_a_due_time_and_the_lab_stays(client, cast, labs, custom_op):
    client.force_login(cast["ines"])
    url = reverse("courses:staff_assignment_edit", args=[custom_op.course.slug, custom_op.slug])
    data = {
        "lab": labs["autodiff"].pk,  # ignored: the lab of an assignment does not change
        "title": "Linear op",
        "slug": custom_op.slug,
        "opens_at": _when(hours=-1),
        "due_at": _when(days=14),
        "is_visible": "on",
        "late_policy": "penalty",
        "late_penalty_per_day": "0",
        "late_penalty_cap": "100",
    }
    done = client.post(url, data)
    assert done.status_code == 302
    custom_op.refresh_from_db()
    assert (custom_op.title, custom_op.lab.slug, custom_op.late_policy) == ("Linear op", "custom_op", "penalty")
    assert (custom_op.due_at - timezone.now()) > timedelta(days=13)


@pytest.mark.parametrize("viewer", ["tariq", "alice", "outsider"])
def test_only_instructors_and_admins_assign_labs(client, cast, labs, custom_op, viewer):
    client.force_login(cast[viewer])
    data = {"lab": labs["autodiff"].pk, "opens_at": _when(hours=-1), "due_at": _when(days=1)}
    assert client.get(_url(cast["course"])).status_code == 404
    assert client.post(_url(cast["course"]), data).status_code == 404
    edit = reverse("courses:staff_assignment_edit", args=[custom_op.course.slug, custom_op.slug])
    assert client.post(edit, data).status_code == 404
    assert Assignment.objects.filter(course=cast["course"]).count() == 1
    client.force_login(UserFactory(username="root", is_superuser=True))
    assert client.get(_url(cast["course"])).status_code == 200

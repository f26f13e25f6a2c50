"""Who may see what: a student sees only their own submissions; staff see the course's."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portal.submissions.services import submission_create


@pytest.fixture
def alices_submission(cast, custom_op, django_capture_on_commit_callbacks):
    return submission_create(student=cast["alice"], assignment=custom_op, files={"linear_op.py": "x = 1\n"})


def test_owner_sees_the_submission(client, cast, alices_submission):
    client.force_login(cast["alice"])
    response = client.get(reverse("submissions:detail", args=[alices_submission.pk]))
    assert response.status_code == 200
    assert f"Submission #{alices_submission.pk}" in response.content.decode()


@pytest.mark.parametrize("viewer", ["bob", "outsider"])
def test_other_students_cannot_open_the_page_or_the_status(client, cast, alices_submission, viewer):
    client.force_login(cast[viewer])
    assert client.get(reverse("submissions:detail", args=[alices_submission.pk])).status_code == 404
    job = alices_submission.jobs.get()
    assert client.get(reverse("submissions:job_status", args=[job.pk])).status_code == 404


@pytest.mark.parametrize("viewer", ["ines", "tariq"])
def test_staff_see_submissions(client, cast, custom_op, alices_submission, viewer):
    client.force_login(cast[viewer])
    assert client.get(reverse("submissions:detail", args=[alices_submission.pk])).status_code == 200
    listing = client.get(reverse("courses:staff_submissions", args=[custom_op.course.slug, custom_op.slug]))
    assert listing.status_code == 200 and "alice" in listing.content.decode()


def test_students_cannot_list_all_submissions(client, cast, custom_op):
    client.force_login(cast["bob"])
    response = client.get(reverse("courses:staff_submissions", args=[custom_op.course.slug, custom_op.slug]))
    assert response.status_code == 404


def test_anonymous_users_are_sent_to_log_in(client, alices_submission):
    response = client.get(reverse("submissions:detail", args=[alices_submission.pk]))
    assert response.status_code == 302 and "/accounts/login/" in response.url

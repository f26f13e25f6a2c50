"""Submitting through the assignment page: good input is stored and enqueued, bad input gets a
clear message on the form and nothing is stored or enqueued."""

from __future__ import annotations

import html
import io
import zipfile
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from labs.catalog import LABS_ROOT
from portal.submissions.models import Job, Submission

CORRECT = (LABS_ROOT / "custom_op" / "solutions" / "correct" / "linear_op.py").read_text()


def submit_url(assignment):
    return reverse("submissions:submit", args=[assignment.course.slug, assignment.slug])


def page_url(assignment):
    return reverse("courses:assignment", args=[assignment.course.slug, assignment.slug])


@pytest.fixture
def alice_client(client, cast):
    client.force_login(cast["alice"])
    return client


@pytest.mark.parametrize(
    ("upload", "message"),
    [
        (SimpleUploadedFile("linear_op.py", b"x = 1\n" * 60_000), "the limit is 262,144 bytes"),
        (SimpleUploadedFile("my_linear.py", b"x = 1\n"), "'my_linear.py' is not a file this lab accepts"),
        (SimpleUploadedFile("linear_op.py", "x = 'é'\n".encode("latin-1")), "is not UTF-8 text"),
        (SimpleUploadedFile("linear_op.py", b"   \n"), "linear_op.py is empty"),
    ],
    ids=["oversized", "wrong-name", "not-utf8", "empty"],
)
def test_bad_upload_is_refused_on_the_form_and_nothing_is_enqueued(alice_client, custom_op, upload, message):
    response = alice_client.post(submit_url(custom_op), {"files": [upload]})
    assert response.status_code == 400
    assert message in html.unescape(response.content.decode())
    assert Submission.objects.count() == 0 and Job.objects.count() == 0


def test_empty_form_is_refused(alice_client, custom_op):
    response = alice_client.post(submit_url(custom_op), {"code": "  "})
    assert "Nothing was submitted" in html.unescape(response.content.decode())
    assert Submission.objects.count() == 0


def test_pasted_code_is_stored_and_its_job_dispatched(alice_client, custom_op, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(submit_url(custom_op), {"code": CORRECT})
    submission = Submission.objects.get()
    assert response.status_code == 302
    assert response.url == reverse("submissions:detail", args=[submission.pk])
    assert submission.source == "paste" and submission.student.username == "alice"
    assert submission.files.get().name == "linear_op.py" and submission.files.get().content == CORRECT
    job = submission.jobs.get()
    assert job.state == Job.State.DISPATCHED and job.dispatched_at is not None
    assert job.lab_version == custom_op.lab.version


def test_uploaded_file_is_accepted(alice_client, custom_op):
    upload = SimpleUploadedFile("linear_op.py", CORRECT.encode())
    response = alice_client.post(submit_url(custom_op), {"files": [upload]})
    assert response.status_code == 302
    assert Submission.objects.get().source == "upload"


def test_closed_assignment_refuses_students(alice_client, custom_op):
    custom_op.due_at = timezone.now() - timedelta(minutes=1)
    custom_op.save()
    response = alice_client.post(submit_url(custom_op), {"code": CORRECT})
    assert "The deadline passed" in response.content.decode()
    assert Submission.objects.count() == 0


def test_outsider_cannot_see_the_assignment(client, cast, custom_op):
    client.force_login(cast["outsider"])
    assert client.get(page_url(custom_op)).status_code == 404
    assert client.post(submit_url(custom_op), {"code": CORRECT}).status_code == 404
    assert Submission.objects.count() == 0


def test_assignment_page_renders_instructions_and_starter(alice_client, custom_op):
    page = alice_client.get(page_url(custom_op)).content.decode()
    assert 'class="highlight"' in page  # fenced code is highlighted
    assert "<script" not in page.split('<article class="instructions">')[1].split("</article>")[0]
    starter = alice_client.get(reverse("courses:starter", args=[custom_op.course.slug, custom_op.slug]))
    assert starter["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(starter.content)).namelist()
    assert names == ["custom_op/linear_op.py", "custom_op/README.md"]


def test_a_post_to_the_assignment_page_itself_is_refused_not_dropped(alice_client, custom_op):
    assert alice_client.post(page_url(custom_op), {"code": CORRECT}).status_code == 405
    assert Submission.objects.count() == 0

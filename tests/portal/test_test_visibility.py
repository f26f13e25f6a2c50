"""Hidden tests are hidden everywhere a student can look: the live websocket, the archived events
the page replays, the page itself, the polled JSON; staff see everything. Over the real ASGI app,
Redis Streams and the database, as tests/portal/test_live_stream.py does."""

from __future__ import annotations

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from gpu_runner.events import RedisStreamSink
from labs.catalog import LABS_ROOT, LabError, visibility_rules
from portal.catalog.models import Lab
from portal.catalog.services import lab_sync_all
from portal.courses.models import Assignment
from portal.courses.services import extension_grant
from portal.submissions import streams
from portal.submissions.models import Job
from portal.submissions.services import job_mark_started, job_record_result, submission_create
from tests.portal.test_live_stream import connect, receive_events

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "the hidden input was 4242"
RULES = [["secret_*", "hidden"], ["edge", "after_due"]]
TESTS = [
    {"name": "plain", "points": 10.0, "outcome": "failed", "message": "expected 3, got 4", "duration": 0.1},
    {"name": "secret_one", "points": 20.0, "outcome": "failed", "message": SECRET, "duration": 0.2},
    {"name": "edge", "points": 5.0, "outcome": "passed", "message": f"edge ok ({SECRET})", "duration": 0.3},
]
SUMMARY = "2 of 3 tests failed: plain, secret_one"


@pytest.fixture
def job(cast, custom_op):
    Assignment.objects.filter(pk=custom_op.pk).update(test_visibility=RULES)
    custom_op.refresh_from_db()
    submission = submission_create(student=cast["alice"], assignment=custom_op, files={"linear_op.py": "x = 1\n"})
    job = submission.jobs.get()
    streams.sync_client().delete(job.events_stream)
    yield job
    streams.sync_client().delete(job.events_stream)


def publish_grading(job: Job) -> None:
    """What a worker publishes for a job whose code printed a hidden case's input."""
    sink = RedisStreamSink(streams.sync_client(), job.events_stream)
    sink.publish("log", {"stream": "output", "text": "imported my module\n", "inputs": False})
    sink.publish("log", {"stream": "runner", "text": "C++/CUDA extension: compiling\n"})
    sink.publish("log", {"stream": "output", "text": f"{SECRET}\n", "inputs": True})
    for test in TESTS:
        sink.publish("test", test)
    sink.publish(
        "result",
        {
            "verdict": "failed",
            "reason": "wrong_answer",
            "score": 14.29,
            "metric": None,
            "summary": SUMMARY,
            "output_tail": SECRET,
        },
    )


def record(job: Job) -> None:
    job_mark_started(job_id=job.pk, worker="w", started_at=timezone.now().timestamp())
    job_record_result(
        job_id=job.pk,
        result={
            "job_id": job.pk,
            "verdict": "failed",
            "reason": "wrong_answer",
            "score": 14.29,
            "metric": None,
            "summary": SUMMARY,
            "tests": TESTS,
            "output_tail": SECRET,
        },
    )


def by_type(events: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for event in events:
        grouped.setdefault(event["type"], []).append(event["data"])
    return grouped


async def test_a_student_watching_live_sees_hidden_tests_by_name_and_points_only(job, cast):
    await database_sync_to_async(publish_grading)(job)
    communicator, connected, _ = await connect(job.pk, cast["alice"])
    assert connected
    events = await receive_events(communicator, 6)  # 7 published; the input-bearing output withheld
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()
    assert [e["seq"] for e in events] == [1, 2, 4, 5, 6, 7]
    shown = by_type(events)
    assert [d["text"] for d in shown["log"]] == ["imported my module\n", "C++/CUDA extension: compiling\n"]
    tests = {d["name"]: d for d in shown["test"]}
    assert tests["plain"]["message"] == "expected 3, got 4" and tests["plain"]["outcome"] == "failed"
    assert tests["secret_one"] == {
        "name": "secret_one",
        "points": 20.0,
        "outcome": "hidden",
        "message": "Hidden test: name and points only.",
        "duration": 0.0,
    }
    assert tests["edge"]["outcome"] == "hidden"
    assert tests["edge"]["message"].startswith("Hidden test: its result shows after ")
    result = shown["result"][0]
    assert result["output_tail"] == "" and result["score"] == 14.29
    assert result["summary"].startswith("1 visible test failed: plain. Hidden tests count toward the score too")
    assert SECRET not in repr(events) and "4242" not in repr(events)


@pytest.mark.parametrize("viewer", ["ines", "tariq"])
async def test_staff_watching_live_see_everything(job, cast, viewer):
    await database_sync_to_async(publish_grading)(job)
    communicator, connected, _ = await connect(job.pk, cast[viewer])
    assert connected
    events = await receive_events(communicator, 7)
    await communicator.disconnect()
    shown = by_type(events)
    assert shown["test"] == TESTS
    assert shown["result"][0]["summary"] == SUMMARY and shown["result"][0]["output_tail"] == SECRET
    assert f"{SECRET}\n" in [d["text"] for d in shown["log"]]


async def test_the_archive_replayed_after_the_job_is_hidden_the_same_way(job, cast):
    await database_sync_to_async(publish_grading)(job)
    await database_sync_to_async(record)(job)
    streams.sync_client().delete(job.events_stream)
    communicator, connected, _ = await connect(job.pk, cast["alice"], after=1)
    assert connected
    events = await receive_events(communicator, 5)
    await communicator.disconnect()
    assert [e["seq"] for e in events] == [2, 4, 5, 6, 7]
    assert "4242" not in repr(events)


def test_the_submission_page_and_its_json_hide_what_the_student_may_not_see(job, cast):
    publish_grading(job)
    record(job)
    job.refresh_from_db()
    assert job.events_archived and job.summary == SUMMARY  # the record keeps everything
    student, staff = Client(), Client()
    student.force_login(cast["alice"])
    staff.force_login(cast["tariq"])
    page = reverse("submissions:detail", args=[job.submission_id])
    status = reverse("submissions:job_status", args=[job.pk])

    html = student.get(page).content.decode()
    assert "4242" not in html
    assert 'id="output-withheld"' in html
    assert "1 visible test failed: plain." in html
    assert '\\"outcome\\": \\"hidden\\"' in html or '"outcome": "hidden"' in html
    assert "4242" not in student.get(status).content.decode()
    assert student.get(status).json()["summary"].startswith("1 visible test failed: plain.")

    html = staff.get(page).content.decode()
    assert "4242" in html and 'id="output-withheld"' not in html
    assert staff.get(status).json()["summary"] == SUMMARY


def test_after_due_tests_show_once_the_window_closes_but_not_before_an_extension_ends(job, cast):
    publish_grading(job)
    record(job)
    assignment = job.submission.assignment
    Assignment.objects.filter(pk=assignment.pk).update(due_at=timezone.now() - timedelta(minutes=1))
    extension_grant(
        assignment=assignment,
        students=[cast["alice"]],
        due_at=timezone.now() + timedelta(days=1),
        reason="medical note",
        granted_by=cast["ines"],
    )
    student = Client()
    student.force_login(cast["alice"])
    page = reverse("submissions:detail", args=[job.submission_id])
    assert "edge ok" not in student.get(page).content.decode()  # alice can still submit

    assignment.extensions.all().delete()
    html = student.get(page).content.decode()
    assert "edge ok (the hidden input was 4242)" in html  # its own message, now shown
    assert "expected 3, got 4" in html
    assert html.count("Hidden test: name and points only.") == 1  # secret_one stays hidden
    assert 'id="output-withheld"' in html  # secret_one is still hidden, so is the output


def test_staff_set_an_assignment_s_visibility_on_its_page_and_a_bad_line_is_named(cast, custom_op):
    client = Client()
    client.force_login(cast["ines"])
    url = reverse("courses:staff_assignment_edit", args=[cast["course"].slug, custom_op.slug])
    form = client.get(url).context["form"]
    data = {k: v for k, v in form.initial.items() if v is not None and k != "lab"}
    data |= {"opens_at": "2026-01-05T09:00", "due_at": "2099-01-19T23:59", "cutoff_at": ""}

    response = client.post(url, {**data, "test_visibility": "edge = after_due\nsecret_* = never"})
    assert response.status_code == 200
    assert "line 2: &#x27;never&#x27; is not a level" in response.content.decode()

    response = client.post(url, {**data, "test_visibility": "edge = after_due\n# comment\nsecret_* = hidden"})
    assert response.status_code == 302
    custom_op.refresh_from_db()
    assert custom_op.test_visibility == [["edge", "after_due"], ["secret_*", "hidden"]]
    assert "edge = after_due\nsecret_* = hidden" in client.get(url).content.decode()


def test_a_lab_declares_visibility_in_lab_toml_and_the_catalog_keeps_it(db):
    lab_sync_all(root=LABS_ROOT)
    quantization = Lab.objects.get(slug="quantization")
    assert quantization.test_visibility == [["quantize_clamp", "after_due"], ["prune_mask_kept", "after_due"]]
    assert Lab.objects.get(slug="custom_op").test_visibility == []
    assert visibility_rules({"edge_*": "hidden"}, "lab.toml") == (("edge_*", "hidden"),)
    with pytest.raises(LabError, match=r"'edge' = 'secret': use visible, after_due or hidden"):
        visibility_rules({"edge": "secret"}, "lab.toml")
    with pytest.raises(LabError, match="must be a table"):
        visibility_rules(["edge"], "lab.toml")


def test_the_assignment_page_says_which_tests_are_hidden_and_until_when(cast, custom_op):
    Assignment.objects.filter(pk=custom_op.pk).update(test_visibility=[*RULES, ["plain", "visible"]])
    student = Client()
    student.force_login(cast["alice"])
    html = student.get(reverse("courses:assignment", args=[cast["course"].slug, custom_op.slug])).content.decode()
    assert 'id="hidden-tests"' in html
    assert "You see only the name and points of <code>secret_*</code>, <code>edge</code> (until " in html
    assert "<code>plain</code>" not in html

"""The job lifecycle in the portal: dispatch, Redis going away and coming back, recording
(idempotent), retries of infrastructure errors, the reaper, and the leaderboard."""

from __future__ import annotations

import base64
import html
import json
import time
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from labs.catalog import LABS_ROOT
from labs.protocol import Task
from portal.catalog.models import Lab
from portal.catalog.services import lab_sync_all
from portal.courses.services import assignment_create
from portal.leaderboards.models import LeaderboardEntry
from portal.leaderboards.selectors import leaderboard_for_assignment
from portal.submissions.models import Job
from portal.submissions.services import (
    job_mark_started,
    job_record_result,
    jobs_dispatch_queued,
    jobs_reap,
    submission_create,
)

CODE = {"linear_op.py": "x = 1\n"}


def test_redis_down_at_submit_keeps_the_job_queued_and_dispatches_it_when_back(client, cast, custom_op, private_broker):
    private_broker.stop()
    client.force_login(cast["alice"])
    url = reverse("submissions:submit", args=[custom_op.course.slug, custom_op.slug])
    response = client.post(url, {"code": "x = 1\n"}, follow=True)
    page = html.unescape(response.content.decode())
    job = Job.objects.get()
    assert job.state == Job.State.QUEUED and job.submission.files.get().content == "x = 1\n"
    assert "Saved and queued" in page and 'id="job-queued-note" class="notice" >' in page.replace("\n", " ")

    assert jobs_dispatch_queued() == 0  # still down: nothing sent, nothing lost
    job.refresh_from_db()
    assert job.state == Job.State.QUEUED

    private_broker.start()
    assert jobs_dispatch_queued() == 1
    job.refresh_from_db()
    assert job.state == Job.State.DISPATCHED
    queued = private_broker.client().lrange("cpu", 0, -1)
    assert len(queued) == 1
    envelope = json.loads(queued[0])
    assert envelope["headers"]["task"] == Task.RUN_JOB
    message = json.loads(base64.b64decode(envelope["body"]))[0][0]
    assert message["job_id"] == job.pk and message["files"] == {"linear_op.py": "x = 1\n"}
    assert message["lab"] == {"slug": "custom_op", "version": custom_op.lab.version}


@pytest.fixture
def queued_job(cast, custom_op, private_broker):
    submission = submission_create(student=cast["alice"], assignment=custom_op, files=CODE)
    return submission.jobs.get()


def result(verdict="succeeded", score=100.0, metric=1.2, **extra):
    return {
        "job_id": 1,
        "verdict": verdict,
        "score": score,
        "metric": metric,
        "summary": "s",
        "reason": "",
        "tests": [],
        "worker": "w1",
        **extra,
    }


def test_recording_a_result_is_idempotent_and_persists_every_transition(queued_job):
    job = queued_job
    assert job.state == Job.State.QUEUED
    jobs_dispatch_queued()
    job_mark_started(job_id=job.pk, worker="w1", started_at=time.time())
    job.refresh_from_db()
    assert job.state == Job.State.RUNNING and job.worker == "w1" and job.started_at is not None
    job_record_result(job_id=job.pk, result=result(score=100.0))
    job_record_result(job_id=job.pk, result=result(verdict="failed", score=0.0))  # a duplicate delivery
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED and job.score == 100.0 and job.metric == 1.2
    assert job.finished_at is not None and job.events_archived
    job_mark_started(job_id=job.pk, worker="late", started_at=time.time())  # out of order: ignored
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED and job.worker == "w1"


def test_infrastructure_error_is_retried_a_bounded_number_of_times(queued_job, settings):
    settings.JOB_MAX_ATTEMPTS = 2
    job_record_result(job_id=queued_job.pk, result=result(verdict="error", score=0.0, metric=None))
    jobs = list(queued_job.submission.jobs.order_by("attempt"))
    assert [(j.attempt, j.state) for j in jobs] == [(1, "error"), (2, "queued")]  # dispatched after commit
    job_record_result(job_id=jobs[1].pk, result=result(verdict="error", score=0.0, metric=None))
    assert queued_job.submission.jobs.count() == 2  # gave up after 2 attempts
    assert LeaderboardEntry.objects.count() == 0


def test_reaper_errors_out_and_retries_a_job_whose_worker_went_silent(queued_job, settings):
    jobs_dispatch_queued()
    job_mark_started(job_id=queued_job.pk, worker="w1", started_at=time.time())
    wall = queued_job.submission.assignment.lab.limits["wall_seconds"]
    assert jobs_reap(now=timezone.now() + timedelta(seconds=wall)) == 0  # within wall time + grace
    assert jobs_reap(now=timezone.now() + timedelta(seconds=wall + settings.JOB_REAPER_GRACE_SECONDS + 1)) == 1
    queued_job.refresh_from_db()
    assert queued_job.state == Job.State.ERROR and queued_job.reason == "worker_lost"
    assert jobs_dispatch_queued() == 1
    assert queued_job.submission.jobs.filter(attempt=2, state=Job.State.DISPATCHED).exists()


def test_a_job_waiting_in_a_long_queue_is_not_reaped_until_its_message_is_presumed_lost(queued_job, settings):
    jobs_dispatch_queued()
    queued_job.refresh_from_db()
    assert queued_job.state == Job.State.DISPATCHED
    assert jobs_reap(now=timezone.now() + timedelta(minutes=30)) == 0  # a busy deadline queue
    assert jobs_reap(now=timezone.now() + timedelta(seconds=settings.JOB_DISPATCH_TIMEOUT_SECONDS + 1)) == 1
    queued_job.refresh_from_db()
    assert queued_job.state == Job.State.ERROR and "No worker picked this job up" in queued_job.summary


def test_leaderboard_keeps_each_students_best_and_ranks_by_score_then_metric(cast, custom_op, private_broker):
    def graded(student, score, metric):
        job = submission_create(student=cast[student], assignment=custom_op, files=CODE).jobs.get()
        job_record_result(
            job_id=job.pk, result=result(verdict="succeeded" if score == 100 else "failed", score=score, metric=metric)
        )
        return job

    graded("alice", 100.0, 1.5)
    best_bob = graded("bob", 100.0, 0.9)  # lower is better for custom_op
    graded("bob", 100.0, 2.0)  # worse than bob's best: ignored
    graded("carol", 60.0, None)
    graded("ines", 100.0, 0.1)  # staff test runs are not ranked
    rows = leaderboard_for_assignment(assignment=custom_op)
    assert [(r["rank"], r["student"], r["score"], r["metric"]) for r in rows] == [
        (1, "bob", 100.0, 0.9),
        (2, "alice", 100.0, 1.5),
        (3, "carol", 60.0, None),
    ]
    assert rows[0]["job_id"] == best_bob.pk


def test_a_correct_gpu_result_without_a_gpu_worker_is_listed_unranked(cast, private_broker, client):
    lab_sync_all(root=LABS_ROOT)
    vector_add = assignment_create(
        course=cast["course"],
        lab=Lab.objects.get(slug="vector_add"),
        opens_at=timezone.now() - timedelta(hours=1),
        due_at=timezone.now() + timedelta(days=7),
    )
    files = {"vector_add.py": "x = 1\n"}
    on_gpu = submission_create(student=cast["alice"], assignment=vector_add, files=files).jobs.get()
    job_record_result(job_id=on_gpu.pk, result=result(metric=2900.0))
    no_gpu = submission_create(student=cast["bob"], assignment=vector_add, files=files).jobs.get()
    job_record_result(
        job_id=no_gpu.pk,
        result=result(metric=None, unranked="no GPU worker", summary="All 11 tests passed: correct; unranked: ..."),
    )
    rows = leaderboard_for_assignment(assignment=vector_add)
    assert [(r["student"], r["metric"], r["unranked"]) for r in rows] == [
        ("alice", 2900.0, ""),
        ("bob", None, "no GPU worker"),
    ]
    client.force_login(cast["ines"])
    page = client.get(reverse("leaderboards:leaderboard", args=[cast["course"].slug, vector_add.slug])).content.decode()
    assert "unranked: no GPU worker" in page


def test_a_malformed_result_is_recorded_as_an_infrastructure_error_and_retried(queued_job):
    job_record_result(job_id=queued_job.pk, result={"verdict": "great", "score": 1e9})
    queued_job.refresh_from_db()
    assert queued_job.state == Job.State.ERROR and queued_job.reason == "bad_result"
    assert "could not be read" in queued_job.summary and "verdict 'great'" in queued_job.summary
    retry = queued_job.submission.jobs.exclude(pk=queued_job.pk).get()
    assert retry.state == Job.State.QUEUED and retry.attempt == 2

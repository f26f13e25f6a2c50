"""Rejudge: staff regrade an assignment's submissions; the jobs wait for students' own jobs (at
most REJUDGE_MAX_IN_FLIGHT of a pool in the broker at once), do not touch quotas, and end in a
table of changed scores that the gradebook and the leaderboard follow."""

from __future__ import annotations

import base64
import html
import json
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils.html import strip_tags

from portal.courses.models import AuditEntry
from portal.leaderboards.models import LeaderboardEntry
from portal.submissions.models import Job, Rejudge
from portal.submissions.rejudge import RejudgeRefused, rejudge_progress, rejudge_start
from portal.submissions.services import (
    job_mark_started,
    job_record_result,
    jobs_dispatch_queued,
    submission_create,
)
from portal.submissions.standing import standing_for

CODE = {"linear_op.py": "x = 1\n"}


def result(score, verdict="succeeded"):
    return {"job_id": 1, "verdict": verdict, "score": score, "metric": None, "summary": "s", "reason": "", "tests": []}


def graded(student, assignment, score, captured):
    """A submission graded the normal way: dispatched to the broker, started, its result recorded."""
    with captured(execute=True):
        submission = submission_create(student=student, assignment=assignment, files=CODE)
    job = submission.jobs.get()
    job_mark_started(job_id=job.pk, worker="w1", started_at=time.time())
    job_record_result(job_id=job.pk, result=result(score))
    return submission


def queue(broker) -> list[tuple[int, str]]:
    """(job id, kind) of each message in the broker's cpu queue, first out first."""
    found = []
    for raw in reversed(broker.client().lrange("cpu", 0, -1)):  # kombu pushes left, pops right
        message = json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0]
        found.append(Job.objects.get(pk=message["job_id"]).kind)
    return found


def test_rejudge_jobs_wait_for_students_jobs_and_few_enter_the_broker(
    cast, custom_op, private_broker, django_capture_on_commit_callbacks, settings
):
    settings.REJUDGE_MAX_IN_FLIGHT = 2
    for name in ("alice", "bob", "carol"):
        graded(cast[name], custom_op, 50.0, django_capture_on_commit_callbacks)
    private_broker.client().delete("cpu")  # the three gradings above were taken by "a worker"
    rejudge = rejudge_start(assignment=custom_op, by=cast["ines"], scope="all")
    assert jobs_dispatch_queued() == 2 and queue(private_broker) == ["rejudge", "rejudge"]

    with django_capture_on_commit_callbacks(execute=True):  # a student submits: dispatched at once
        mine = submission_create(student=cast["alice"], assignment=custom_op, files=CODE).jobs.get()
    assert queue(private_broker) == ["rejudge", "rejudge", "submission"]
    # the third rejudge waits: a student's job waits, and two rejudges are in flight anyway
    assert jobs_dispatch_queued() == 0
    for job in Job.objects.filter(kind="rejudge", state="dispatched"):
        job_mark_started(job_id=job.pk, worker="w1", started_at=time.time())
        job_record_result(job_id=job.pk, result=result(50.0))
    assert jobs_dispatch_queued() == 0  # alice's own job still waits in the broker
    job_mark_started(job_id=mine.pk, worker="w2", started_at=time.time())
    assert jobs_dispatch_queued() == 1  # now the last rejudge goes
    assert rejudge_progress(rejudge=rejudge).done == 2


def test_a_rejudge_replaces_scores_and_reports_what_changed(
    client, cast, custom_op, private_broker, django_capture_on_commit_callbacks
):
    custom_op.max_submissions = 2
    custom_op.save()
    a = graded(cast["alice"], custom_op, 80.0, django_capture_on_commit_callbacks)
    b = graded(cast["bob"], custom_op, 60.0, django_capture_on_commit_callbacks)
    client.force_login(cast["ines"])
    url = reverse("courses:rejudges", args=[custom_op.course.slug])
    done = client.post(url, {"assignment": custom_op.slug, "scope": "all"}, follow=True)
    assert "Rejudge #" in html.unescape(done.content.decode()) and "2 submissions queued" in done.content.decode()
    rejudge = Rejudge.objects.get()
    assert list(rejudge.items.values_list("submission_id", "before_score")) == [(a.pk, 80.0), (b.pk, 60.0)]
    jobs_dispatch_queued()
    for job, score in [(a.jobs.get(attempt=2), 40.0), (b.jobs.get(attempt=2), 60.0)]:
        assert job.kind == "rejudge"
        job_mark_started(job_id=job.pk, worker="w1", started_at=time.time())
        job_record_result(job_id=job.pk, result=result(score))

    detail = reverse("courses:rejudge", args=[custom_op.course.slug, rejudge.pk])
    page = html.unescape(strip_tags(client.get(detail).content.decode()))
    assert "2 of 2 graded: finished, 1 score changed." in page
    assert 'http-equiv="refresh"' not in client.get(detail).content.decode()  # it stops refreshing once finished
    progress = rejudge_progress(rejudge=rejudge)
    assert [(c.item.submission_id, c.item.before_score, c.after) for c in progress.changed] == [(a.pk, 80.0, 40.0)]
    # the new score replaces the old one, down as well as up
    assert LeaderboardEntry.objects.get(student=cast["alice"]).score == 40.0
    export = client.get(reverse("courses:gradebook_csv", args=[custom_op.course.slug])).content.decode()
    assert "alice,alice@example.edu,,40" in export
    # a rejudge is not a submission: alice's quota is as it was
    assert standing_for(assignment=custom_op, student=cast["alice"]).quota.left == 1
    entry = AuditEntry.objects.get(action="rejudge")
    assert (entry.actor_name, entry.data["submissions"]) == ("ines", [a.pk, b.pk])

    client.force_login(cast["tariq"])
    assert client.post(url, {"assignment": custom_op.slug, "scope": "all"}).status_code == 404
    assert Rejudge.objects.count() == 1


def test_the_command_rejudges_each_students_final_submission(
    cast, custom_op, private_broker, django_capture_on_commit_callbacks, capsys
):
    graded(cast["alice"], custom_op, 30.0, django_capture_on_commit_callbacks)
    best = graded(cast["alice"], custom_op, 90.0, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        busy = submission_create(student=cast["bob"], assignment=custom_op, files=CODE)  # still queued
    call_command("rejudge", "aisys", custom_op.slug, "--only-final")
    out = capsys.readouterr().out
    rejudge = Rejudge.objects.get()
    assert f"rejudge #{rejudge.pk} of aisys/{custom_op.slug} against lab version" in out
    assert "1 submissions queued" in out and f"/staff/rejudges/{rejudge.pk}/" in out
    assert list(rejudge.items.values_list("submission_id", flat=True)) == [best.pk]
    assert AuditEntry.objects.get(action="rejudge").actor_name == "(manage.py rejudge)"
    with pytest.raises(RejudgeRefused, match="every chosen submission is being graded already"):
        rejudge_start(assignment=custom_op, by=None, scope="selected", submission_ids=[busy.pk])
    with pytest.raises(CommandError, match="no assignment 'nope'"):
        call_command("rejudge", "aisys", "nope")

"""Reads on submissions and jobs, each filtered by portal/access.py's rules."""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from portal.access import can_view_submission, is_course_staff
from portal.courses import policies
from portal.courses.models import Assignment
from portal.submissions.models import Job, JobEvent, Submission
from portal.submissions.standing import extension_of, submission_owner_ids


def submission_for_viewer(*, submission_id: int, user: User) -> Submission | None:
    submission = (
        Submission.objects.select_related("assignment__course", "assignment__lab", "student")
        .prefetch_related("files", Prefetch("jobs", queryset=Job.objects.order_by("-attempt")))
        .filter(pk=submission_id)
        .first()
    )
    if submission is None or not can_view_submission(user=user, submission=submission):
        return None
    return submission


def job_for_viewer(*, job_id: int, user: User | AnonymousUser) -> Job | None:
    job = (
        Job.objects.select_related("submission__assignment__course", "submission__assignment__lab")
        .filter(pk=job_id)
        .first()
    )
    if job is None or not can_view_submission(user=user, submission=job.submission):
        return None
    return job


def job_latest(*, submission: Submission) -> Job | None:
    return submission.jobs.order_by("-attempt").first()


def job_queue_position(*, job: Job) -> int | None:
    """1 when the job is next in its resource class's queue; None once it is running or done."""
    if job.state not in (Job.State.QUEUED, Job.State.DISPATCHED):
        return None
    ahead = Job.objects.filter(
        state__in=(Job.State.QUEUED, Job.State.DISPATCHED), resource_class=job.resource_class, pk__lt=job.pk
    ).count()
    return ahead + 1


def test_view_for(*, submission: Submission, user: User | AnonymousUser, now: datetime | None = None):
    """What ``user`` may see of the submission's tests and output (policies.TestView): everything
    for course staff; for its author, the assignment's and the lab's visibility rules, with the
    after_due tests shown once the author's own window has closed."""
    assignment = submission.assignment
    if is_course_staff(course=assignment.course, user=user):
        return policies.TestView()
    rules = tuple(tuple(rule) for rule in [*assignment.test_visibility, *assignment.lab.test_visibility])
    who = submission_owner_ids(submission=submission)  # a team's window: its members' latest extension
    window = policies.window_for(assignment, extension_of(assignment=assignment, student_ids=who))
    reveal = policies.reveal_at(assignment, window)
    now = now or timezone.now()
    return policies.TestView(
        rules=rules,
        revealed=now >= reveal,
        everything=False,
        shows=f"after {assignment.course.local(reveal)}",
    )


def job_snapshot(*, job: Job, view: policies.TestView) -> dict:
    """What the submission page shows of a job, as JSON (also polled while the job waits), as
    ``view`` (its viewer's TestView) lets them see it."""
    latest = job_latest(submission=job.submission)
    return {
        "id": job.pk,
        "submission_id": job.submission_id,
        "attempt": job.attempt,
        "state": job.state,
        "is_final": job.is_final,
        "queue_position": job_queue_position(job=job),
        "score": job.score,
        "metric": job.metric,
        "reason": job.reason,
        "summary": view.summary(job.summary),
        "latest_job_id": latest.pk if latest else job.pk,
    }


def job_archived_events(*, job_id: int, after: int, view: policies.TestView) -> list[dict]:
    """The archived events after seq ``after``, as ``view`` lets its viewer see them (an event it
    withholds is left out; the seqs of the rest are unchanged, so resuming by seq still works)."""
    events = (
        view.event({"seq": e.seq, "type": e.type, "ts": e.ts, "data": e.data})
        for e in JobEvent.objects.filter(job_id=job_id, seq__gt=after).order_by("seq")
    )
    return [e for e in events if e is not None]


def job_stream_access(*, job_id: int, user: User | AnonymousUser) -> dict | None:
    """For the websocket consumer: None if the user may not watch the job, else what it needs."""
    job = job_for_viewer(job_id=job_id, user=user)
    if job is None:
        return None
    view = test_view_for(submission=job.submission, user=user)
    return {"id": job.pk, "state": job.state, "events_stream": job.events_stream, "view": view}


def submissions_for_student(*, user: User) -> QuerySet[Submission]:
    return (
        Submission.objects.filter(student=user)
        .select_related("assignment__course", "assignment__lab")
        .prefetch_related(Prefetch("jobs", queryset=Job.objects.order_by("-attempt")))
    )


def submissions_for_assignment(*, assignment: Assignment) -> QuerySet[Submission]:
    return (
        Submission.objects.filter(assignment=assignment)
        .select_related("student")
        .prefetch_related(Prefetch("jobs", queryset=Job.objects.order_by("-attempt")))
    )

"""Keep each student's best result per assignment and announce changes to live viewers."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from portal.access import is_ranked
from portal.leaderboards.models import LeaderboardEntry
from portal.submissions.models import Job

log = logging.getLogger(__name__)


def leaderboard_group(assignment_id: int) -> str:
    return f"leaderboard_{assignment_id}"


def better(*, score: float, metric: float | None, than, direction: str) -> bool:
    """Whether a result beats ``than`` (an entry or a job): a higher score, then the better metric."""
    if score != than.score:
        return score > than.score
    if metric is None:
        return False
    if than.metric is None:
        return True
    return metric < than.metric if direction == "lower" else metric > than.metric


def leaderboard_record_job(*, job) -> LeaderboardEntry | None:
    """Make ``job`` the student's entry if it beats their best; staff test runs are not ranked."""
    submission = job.submission
    assignment = submission.assignment
    if job.score is None or submission.disqualified_at is not None:
        return None
    if not is_ranked(course_id=assignment.course_id, user_id=submission.student_id):
        return None
    entry = (
        LeaderboardEntry.objects.select_for_update()
        .filter(assignment=assignment, student_id=submission.student_id)
        .first()
    )
    if entry is not None and not better(
        score=job.score, metric=job.metric, than=entry, direction=assignment.lab.metric_direction or "higher"
    ):
        return entry
    entry, _ = LeaderboardEntry.objects.update_or_create(
        assignment=assignment,
        student_id=submission.student_id,
        defaults={"job": job, "score": job.score, "metric": job.metric, "achieved_at": job.finished_at},
    )
    transaction.on_commit(lambda: leaderboard_announce(assignment_id=assignment.pk))
    return entry


def best_results(*, assignment, student_ids=None, submitted_by=None) -> dict[int, Job]:
    """Each student's best result on the assignment, from scratch: among their submissions' results
    (``Job.results``: a rejudge's replaces the first), disqualified ones left out; optionally only
    some students, or only what was submitted by ``submitted_by``."""
    jobs = Job.results().filter(submission__assignment=assignment, submission__disqualified_at__isnull=True)
    if student_ids is not None:
        jobs = jobs.filter(submission__student_id__in=student_ids)
    if submitted_by is not None:
        jobs = jobs.filter(submission__created_at__lte=submitted_by)
    direction = assignment.lab.metric_direction or "higher"
    best: dict[int, Job] = {}
    for job in jobs.select_related("submission__student").order_by("finished_at", "pk"):
        held = best.get(job.submission.student_id)
        if held is None or better(score=job.score, metric=job.metric, than=held, direction=direction):
            best[job.submission.student_id] = job
    return best


def leaderboard_rebuild(*, assignment, student_id: int) -> LeaderboardEntry | None:
    """Make the student's entry their best result again, from scratch: after a result of theirs
    was disqualified or reinstated, or regraded by a rejudge. No result left: no entry."""
    job = best_results(assignment=assignment, student_ids=[student_id]).get(student_id)
    transaction.on_commit(lambda: leaderboard_announce(assignment_id=assignment.pk))
    if job is None or not is_ranked(course_id=assignment.course_id, user_id=student_id):
        LeaderboardEntry.objects.filter(assignment=assignment, student_id=student_id).delete()
        return None
    entry, _ = LeaderboardEntry.objects.update_or_create(
        assignment=assignment,
        student_id=student_id,
        defaults={"job": job, "score": job.score, "metric": job.metric, "achieved_at": job.finished_at},
    )
    return entry


def leaderboard_announce(*, assignment_id: int) -> None:
    """Tell open leaderboard pages to refresh; best effort (the page also loads fresh on reload)."""
    try:
        async_to_sync(get_channel_layer().group_send)(
            leaderboard_group(assignment_id), {"type": "leaderboard.changed", "assignment_id": assignment_id}
        )
    except Exception as exc:  # noqa: BLE001
        log.warning("leaderboard %s: push failed (%s)", assignment_id, exc)

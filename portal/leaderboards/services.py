"""Keep each student's best result per assignment and announce changes to live viewers."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from portal.access import is_ranked
from portal.leaderboards.models import LeaderboardEntry
from portal.submissions.models import Job
from portal.submissions.standing import windows_by_submission

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


def owner_of(submission) -> tuple[str, int]:
    """Whose leaderboard row a submission's result counts for: its team's, on a team assignment,
    else its student's."""
    return ("team", submission.team_id) if submission.team_id else ("student", submission.student_id)


def _entries(assignment, owner: tuple[str, int]):
    kind, key = owner
    if kind == "team":
        return LeaderboardEntry.objects.filter(assignment=assignment, team_id=key)
    return LeaderboardEntry.objects.filter(assignment=assignment, student_id=key, team__isnull=True)


def _entry_set(assignment, owner: tuple[str, int], job) -> LeaderboardEntry:
    """Make ``job`` the owner's entry (created if it has none)."""
    fields = {"job": job, "student_id": job.submission.student_id, "score": job.score, "metric": job.metric}
    fields["achieved_at"] = job.finished_at
    entries = _entries(assignment, owner)
    if entries.update(**fields):
        return entries.first()
    return LeaderboardEntry.objects.create(assignment=assignment, team_id=job.submission.team_id, **fields)


def leaderboard_record_job(*, job) -> LeaderboardEntry | None:
    """Make ``job`` the student's (or their team's) entry if it beats its best; staff test runs are
    not ranked."""
    submission = job.submission
    assignment = submission.assignment
    if job.score is None or submission.disqualified_at is not None:
        return None
    if not is_ranked(course_id=assignment.course_id, user_id=submission.student_id):
        return None
    entries = _entries(assignment, owner_of(submission))
    entry = entries.select_for_update().first()
    if entry is not None and not better(
        score=job.score, metric=job.metric, than=entry, direction=assignment.lab.metric_direction or "higher"
    ):
        return entry
    entry = _entry_set(assignment, owner_of(submission), job)
    transaction.on_commit(lambda: leaderboard_announce(assignment_id=assignment.pk))
    return entry


def best_results(*, assignment, student_ids=None, team_ids=None, on_time=False) -> dict[tuple[str, int], Job]:
    """Each student's (or team's: ``owner_of``) best result on the assignment, from scratch: among
    their submissions' results (``Job.results``: a rejudge's replaces the first), disqualified ones
    left out; optionally only those submitted by some students, or of some teams, or ``on_time``:
    by the due time of whoever made them (their extension's, their team's)."""
    jobs = Job.results().filter(submission__assignment=assignment, submission__disqualified_at__isnull=True)
    if student_ids is not None:
        jobs = jobs.filter(submission__student_id__in=student_ids)
    if team_ids is not None:
        jobs = jobs.filter(submission__team_id__in=team_ids)
    windows = windows_by_submission(assignment=assignment) if on_time else {}
    direction = assignment.lab.metric_direction or "higher"
    best: dict[tuple[str, int], Job] = {}
    for job in jobs.select_related("submission__student", "submission__team").order_by("finished_at", "pk"):
        due = windows[job.submission_id].due_at if job.submission_id in windows else assignment.due_at
        if on_time and job.submission.created_at > due:
            continue
        owner = owner_of(job.submission)
        held = best.get(owner)
        if held is None or better(score=job.score, metric=job.metric, than=held, direction=direction):
            best[owner] = job
    return best


def leaderboard_rebuild(*, assignment, student_id: int, team_id: int | None = None) -> LeaderboardEntry | None:
    """Make the student's (or team's) entry their best result again, from scratch: after a result
    of theirs was disqualified or reinstated, or regraded by a rejudge. No result left: no entry."""
    owner = ("team", team_id) if team_id else ("student", student_id)
    if team_id:
        jobs = best_results(assignment=assignment, team_ids=[team_id])
    else:
        jobs = best_results(assignment=assignment, student_ids=[student_id])
    job = jobs.get(owner)
    transaction.on_commit(lambda: leaderboard_announce(assignment_id=assignment.pk))
    if job is None or not is_ranked(course_id=assignment.course_id, user_id=job.submission.student_id):
        _entries(assignment, owner).delete()
        return None
    return _entry_set(assignment, owner, job)


def leaderboard_announce(*, assignment_id: int) -> None:
    """Tell open leaderboard pages to refresh; best effort (the page also loads fresh on reload)."""
    try:
        async_to_sync(get_channel_layer().group_send)(
            leaderboard_group(assignment_id), {"type": "leaderboard.changed", "assignment_id": assignment_id}
        )
    except Exception as exc:  # noqa: BLE001
        log.warning("leaderboard %s: push failed (%s)", assignment_id, exc)

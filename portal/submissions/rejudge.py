"""Rejudge: regrade an assignment's submissions (all, selected, or each student's that counts)
with the lab as it is now. Rejudge jobs run after students' own jobs (services.jobs_dispatch_queued),
do not count against quotas (no submission is created), and end in a table of whose score changed."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max

from portal.courses.audit import Action, audit
from portal.courses.gradebook import gradebook
from portal.courses.models import Assignment
from portal.submissions.models import Job, Rejudge, RejudgeItem, Submission
from portal.submissions.services import job_create


class RejudgeRefused(Exception):
    """Nothing to rejudge; the message says why."""


def _chosen(assignment: Assignment, scope: str, submission_ids: list[int] | None) -> list[Submission]:
    submissions = Submission.objects.filter(assignment=assignment).select_related("student")
    if scope == Rejudge.Scope.SELECTED:
        return list(submissions.filter(pk__in=submission_ids or []).order_by("pk"))
    if scope == Rejudge.Scope.FINAL:
        book = gradebook(course=assignment.course, assignment_slug=assignment.slug)
        counted = [row.grades[0].counted.submission_id for row in book.rows if row.grades and row.grades[0].counted]
        return list(submissions.filter(pk__in=counted).order_by("pk"))
    return list(submissions.order_by("pk"))


@transaction.atomic
def rejudge_start(
    *, assignment: Assignment, by: User | None, scope: str, submission_ids: list[int] | None = None
) -> Rejudge:
    """Queue one rejudge job per chosen submission; a submission still being graded is left out
    (its grading uses the lab as it is now anyway). Raises RejudgeRefused when none is left."""
    chosen = _chosen(assignment, scope, submission_ids)
    attempts = dict(
        Job.objects.filter(submission__in=chosen)
        .values("submission_id")
        .annotate(n=Max("attempt"))
        .values_list("submission_id", "n")
    )
    busy = set(
        Job.objects.filter(submission__in=chosen, state__in=Job.ACTIVE_STATES).values_list("submission_id", flat=True)
    )
    todo = [s for s in chosen if s.pk not in busy]
    if not todo:
        why = "no submission matches" if not chosen else "every chosen submission is being graded already"
        raise RejudgeRefused(f"Nothing to rejudge: {why}.")
    rejudge = Rejudge.objects.create(
        assignment=assignment, scope=scope, lab_version=assignment.lab.version, requested_by=by
    )
    latest_scores = _latest_scores([s.pk for s in todo])
    for submission in todo:
        job = job_create(submission=submission, attempt=attempts.get(submission.pk, 0) + 1, kind=Job.Kind.REJUDGE)
        RejudgeItem.objects.create(
            rejudge=rejudge, submission=submission, job=job, before_score=latest_scores.get(submission.pk)
        )
    skipped = f"; {len(busy)} being graded left out" if busy else ""
    audit(
        course=assignment.course,
        actor=by,
        actor_name="(manage.py rejudge)",
        action=Action.REJUDGE,
        summary=f"{assignment.title}: rejudge #{rejudge.pk} of {len(todo)} submissions "
        f"({rejudge.get_scope_display().lower()}, lab version {rejudge.lab_version}){skipped}",
        assignment=assignment.slug,
        rejudge=rejudge.pk,
        submissions=[s.pk for s in todo],
    )
    return rejudge


def _latest_scores(submission_ids: list[int]) -> dict[int, float | None]:
    """Each submission's current score: that of its latest grading."""
    scores: dict[int, float | None] = {}
    for sid, score in (
        Job.objects.filter(submission_id__in=submission_ids)
        .order_by("submission_id", "-attempt")
        .values_list("submission_id", "score")
    ):
        scores.setdefault(sid, score)
    return scores


@dataclass(frozen=True)
class Change:
    item: RejudgeItem
    state: str  # the submission's latest grading's state
    after: float | None

    @property
    def done(self) -> bool:
        return self.state in Job.FINAL_STATES

    @property
    def changed(self) -> bool:
        return self.done and self.after != self.item.before_score


@dataclass(frozen=True)
class Progress:
    rejudge: Rejudge
    changes: list[Change]

    @property
    def total(self) -> int:
        return len(self.changes)

    @property
    def done(self) -> int:
        return sum(c.done for c in self.changes)

    @property
    def finished(self) -> bool:
        return self.done == self.total

    @property
    def changed(self) -> list[Change]:
        return [c for c in self.changes if c.changed]


def rejudge_progress(*, rejudge: Rejudge) -> Progress:
    """How far the rejudge is, and whose score changed from what to what (a retried grading is
    followed to its latest attempt)."""
    items = list(rejudge.items.select_related("submission__student"))
    latest: dict[int, tuple[str, float | None]] = {}
    rows = Job.objects.filter(submission_id__in=[i.submission_id for i in items]).order_by("submission_id", "-attempt")
    for sid, state, score in rows.values_list("submission_id", "state", "score"):
        latest.setdefault(sid, (state, score))
    return Progress(rejudge, [Change(i, *latest.get(i.submission_id, ("queued", None))) for i in items])

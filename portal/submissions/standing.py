"""A student's standing on an assignment: their window, lateness, grace days and quota.

The reads the policies of portal/courses/policies.py need, in a few queries; the assignment page
shows the result and the submit service applies it (again, under a lock) before storing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import User
from django.db.models import Max, OuterRef, QuerySet, Subquery
from django.utils import timezone

from portal.courses import policies
from portal.courses.models import Assignment, Extension
from portal.courses.policies import LatePolicy
from portal.submissions.models import Job, Submission

GIVEN_BACK = (Job.State.ERROR, Job.State.CANCELLED)


def counted_submissions(*, assignment: Assignment | None = None, student: User) -> QuerySet[Submission]:
    """The student's submissions that count against quotas and lateness: all but those whose
    grading ended in an infrastructure error (after its retries) or was cancelled."""
    own = Job.objects.filter(submission=OuterRef("pk"), kind=Job.Kind.SUBMISSION)  # not a staff rejudge
    latest_state = own.order_by("-attempt").values("state")[:1]
    submissions = Submission.objects.filter(student=student)
    if assignment is not None:
        submissions = submissions.filter(assignment=assignment)
    return submissions.annotate(latest_state=Subquery(latest_state)).exclude(latest_state__in=GIVEN_BACK)


def grace_days_by_assignment(*, course_id: int, student: User) -> dict[int, int]:
    """Grace days each grace-policy assignment of the course has spent: its latest counted lateness."""
    rows = (
        counted_submissions(student=student)
        .filter(assignment__course_id=course_id, assignment__late_policy=LatePolicy.GRACE, late_days__gt=0)
        .values("assignment_id")
        .annotate(days=Max("late_days"))
    )
    return {row["assignment_id"]: row["days"] for row in rows}


@dataclass(frozen=True)
class Standing:
    assignment: Assignment
    window: policies.Window
    extension: Extension | None
    quota: policies.Quota
    acceptance: policies.Acceptance
    grace_bank: int
    grace_spent: int
    grace_spent_here: int
    now: datetime

    @property
    def grace_left(self) -> int:
        return max(0, self.grace_bank - self.grace_spent)

    @property
    def refusal(self) -> str | None:
        return self.acceptance.refusal or self.quota.refusal(self.now)

    @property
    def closes_at(self) -> datetime | None:
        return self.window.closes_at(self.assignment.late_policy)

    @property
    def penalty_now(self) -> float:
        """The late penalty a submission now would carry (penalty policy), in percent."""
        return policies.late_penalty_percent(self.assignment, self.acceptance.late_days)


def standing_for(*, assignment: Assignment, student: User, now: datetime | None = None) -> Standing:
    """The student's standing at ``now``: what they may submit and what it would cost."""
    now = now or timezone.now()
    extension = Extension.objects.filter(assignment=assignment, student=student).first()
    window = policies.window_for(assignment, extension)
    times = list(counted_submissions(assignment=assignment, student=student).values_list("created_at", flat=True))
    quota = policies.quota_for(assignment, times, now)
    bank = assignment.course.grace_days
    spent_by = grace_days_by_assignment(course_id=assignment.course_id, student=student) if bank else {}
    spent = policies.grace_days_spent(spent_by)
    here = spent_by.get(assignment.pk, 0)
    accept = policies.acceptance(
        assignment,
        window,
        now,
        fmt=assignment.course.local,
        grace_days_left=max(0, bank - spent),
        grace_days_spent_here=here,
    )
    return Standing(assignment, window, extension, quota, accept, bank, spent, here, now)


def windows_by_student(*, assignment: Assignment) -> dict[int, policies.Window]:
    """Each extended student's window; the others have the assignment's own."""
    return {e.student_id: policies.window_for(assignment, e) for e in assignment.extensions.all()}

"""A student's standing on an assignment: their window, lateness, grace days and quota.

The reads the policies of portal/courses/policies.py need, in a few queries; the assignment page
shows the result and the submit service applies it (again, under a lock) before storing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import User
from django.db.models import Max, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from portal.courses import policies
from portal.courses.models import Assignment, Extension, Team, TeamMember
from portal.courses.policies import LatePolicy
from portal.courses.teams import members_by_team, team_member_ids, team_of
from portal.submissions.models import Job, Submission

GIVEN_BACK = (Job.State.ERROR, Job.State.CANCELLED)


def owned_submissions(*, student: User, course_id: int) -> QuerySet[Submission]:
    """The submissions that are the student's in a course: their own on individual assignments,
    and their team's (whoever of it submitted) on team assignments."""
    team = TeamMember.objects.filter(course_id=course_id, user=student).values("team_id")
    return Submission.objects.filter(Q(student=student, team__isnull=True) | Q(team_id__in=team))


def counted_submissions(
    *, assignment: Assignment | None = None, student: User, course_id: int | None = None
) -> QuerySet[Submission]:
    """The student's (and their team's) submissions that count against quotas and lateness, on one
    assignment or on every one of a course: all but those whose grading ended in an infrastructure
    error (after its retries) or was cancelled."""
    own = Job.objects.filter(submission=OuterRef("pk"), kind=Job.Kind.SUBMISSION)  # not a staff rejudge
    latest_state = own.order_by("-attempt").values("state")[:1]
    submissions = owned_submissions(student=student, course_id=assignment.course_id if assignment else course_id)
    if assignment is not None:
        submissions = submissions.filter(assignment=assignment)
    return submissions.annotate(latest_state=Subquery(latest_state)).exclude(latest_state__in=GIVEN_BACK)


def grace_days_by_assignment(*, course_id: int, student: User) -> dict[int, int]:
    """Grace days each grace-policy assignment of the course has spent: its latest counted lateness
    (on a team assignment, the team's: each member's bank pays it)."""
    rows = (
        counted_submissions(student=student, course_id=course_id)
        .filter(assignment__course_id=course_id, assignment__late_policy=LatePolicy.GRACE, late_days__gt=0)
        .values("assignment_id")
        .annotate(days=Max("late_days"))
    )
    return {row["assignment_id"]: row["days"] for row in rows}


def latest_extension(extensions) -> Extension | None:
    """Of the extensions of a team's members, the one that sets the team's window: the latest-due
    (an extension granted to one member covers the team); of equals, the first granted."""
    return max(extensions, key=lambda e: (e.due_at, -e.pk), default=None)


def extension_of(*, assignment: Assignment, student_ids: list[int]) -> Extension | None:
    """The extension that sets the window of these students' work: a student's own, or a team's
    (``latest_extension`` of its members')."""
    return latest_extension(assignment.extensions.filter(student_id__in=student_ids))


def submission_owner_ids(*, submission: Submission) -> list[int]:
    """Whose submission it is: its team's members (on a team assignment), else its author."""
    if not submission.team_id:
        return [submission.student_id]
    return list(TeamMember.objects.filter(team_id=submission.team_id).values_list("user_id", flat=True))


def team_members(*, assignment: Assignment, student: User) -> tuple[Team | None, list[int]]:
    """On a team assignment, the student's team and its members' ids; else (None, [the student])."""
    if assignment.team_size <= 1:
        return None, [student.pk]
    team = team_of(course_id=assignment.course_id, user_id=student.pk)
    return team, (team_member_ids(team=team) if team else [student.pk])


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
    team: Team | None = None
    team_size: int = 1  # members of ``team``
    team_refusal: str | None = None  # why the student cannot submit to a team assignment

    @property
    def grace_left(self) -> int:
        return max(0, self.grace_bank - self.grace_spent)

    @property
    def refusal(self) -> str | None:
        who = f"Team {self.team.name} has" if self.team is not None else "You have"
        return self.team_refusal or self.acceptance.refusal or self.quota.refusal(self.now, who=who)

    @property
    def closes_at(self) -> datetime | None:
        return self.window.closes_at(self.assignment.late_policy)

    @property
    def penalty_now(self) -> float:
        """The late penalty a submission now would carry (penalty policy), in percent."""
        return policies.late_penalty_percent(self.assignment, self.acceptance.late_days)


def standing_for(*, assignment: Assignment, student: User, now: datetime | None = None) -> Standing:
    """The student's standing at ``now``: what they may submit and what it would cost. On a team
    assignment it is their team's: its window (a member's extension covers it), its quota, and
    the grace days its least-provided member has left."""
    now = now or timezone.now()
    team, members = team_members(assignment=assignment, student=student)
    extension = extension_of(assignment=assignment, student_ids=members)
    window = policies.window_for(assignment, extension)
    times = list(counted_submissions(assignment=assignment, student=student).values_list("created_at", flat=True))
    quota = policies.quota_for(assignment, times, now)
    bank = assignment.course.grace_days
    spent, here = 0, 0
    if bank:
        users = User.objects.filter(pk__in=members) if len(members) > 1 else [student]
        for member in users:
            spent_by = grace_days_by_assignment(course_id=assignment.course_id, student=member)
            spent = max(spent, policies.grace_days_spent(spent_by))
            here = max(here, spent_by.get(assignment.pk, 0))
    accept = policies.acceptance(
        assignment,
        window,
        now,
        fmt=assignment.course.local,
        grace_days_left=max(0, bank - spent),
        grace_days_spent_here=here,
    )
    refusal = None
    if assignment.team_size > 1:
        if team is None:
            refusal = (
                f"This assignment is done in teams of up to {assignment.team_size}: form a team or accept an "
                "invitation on the course page first."
            )
        elif len(members) > assignment.team_size:
            refusal = (
                f"Team {team.name} has {len(members)} members; this assignment takes teams of up to "
                f"{assignment.team_size}. Ask your instructor to split it."
            )
    return Standing(assignment, window, extension, quota, accept, bank, spent, here, now, team, len(members), refusal)


def windows_by_submission(*, assignment: Assignment) -> dict[int, policies.Window]:
    """The window of each submission of the assignment whose window is not the assignment's own:
    its author's extension, or, for a team's, the latest-due extension of its members."""
    extensions = {e.student_id: e for e in assignment.extensions.all()}
    if not extensions:
        return {}
    teams = members_by_team(team_ids=assignment.submissions.exclude(team=None).values("team_id"))
    windows = {}
    for pk, student_id, team_id in assignment.submissions.values_list("pk", "student_id", "team_id"):
        who = teams.get(team_id, [student_id]) if team_id else [student_id]
        extension = latest_extension(extensions[i] for i in who if i in extensions)
        if extension is not None:
            windows[pk] = policies.window_for(assignment, extension)
    return windows

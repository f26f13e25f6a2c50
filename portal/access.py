"""Who may see or do what: the one place that views, websocket consumers, services and commands
ask. Each rule is a plain function of the user and the thing; docs/security.md lists the roles.

Roles in a course: ``student``, ``ta``, ``instructor`` (an Enrollment), and ``admin`` for site
superusers, who are in every course. Staff are TAs, instructors and admins; managers (who change
a course: roster, assignments, policies, grades, rejudges, disqualifications) are instructors and
admins. TAs see every submission and grant extensions, or, in a course that says so, those of
their own section's students only.
"""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.utils import timezone

from portal.courses.models import Assignment, Course, Enrollment, TeamMember

STAFF_ROLES = (Enrollment.Role.TA, Enrollment.Role.INSTRUCTOR, "admin")
MANAGER_ROLES = (Enrollment.Role.INSTRUCTOR, "admin")


def course_role(*, course: Course, user: User | AnonymousUser) -> str | None:
    """The user's role in the course ("student", "ta", "instructor"), "admin" for superusers, else None."""
    if not user.is_authenticated:
        return None
    if user.is_superuser:
        return "admin"
    return Enrollment.objects.filter(course=course, user=user).values_list("role", flat=True).first()


def is_course_staff(*, course: Course, user: User | AnonymousUser) -> bool:
    return course_role(course=course, user=user) in STAFF_ROLES


def can_manage_course(*, course: Course, user: User | AnonymousUser) -> bool:
    """The course's instructors and admins manage it; TAs do not."""
    return course_role(course=course, user=user) in MANAGER_ROLES


def can_manage_labs(*, user: User | AnonymousUser) -> bool:
    """Instructors of any course, and admins, may upload and publish labs."""
    if not user.is_authenticated:
        return False
    return user.is_superuser or Enrollment.objects.filter(user=user, role=Enrollment.Role.INSTRUCTOR).exists()


def can_see_assignment(*, assignment: Assignment, user: User | AnonymousUser) -> bool:
    """Staff see every assignment of their course; its students the visible ones that have opened;
    nobody else any (its page, starter, leaderboard, live leaderboard)."""
    role = course_role(course=assignment.course, user=user)
    if role is None:
        return False
    if role in STAFF_ROLES:
        return True
    return assignment.is_visible and assignment.opens_at <= timezone.now()


def section_scope(*, course: Course, user: User | AnonymousUser) -> str | None:
    """The one section whose students a TA may see, in a course whose TAs see only their own
    section; None: no such limit (instructors, admins, TAs elsewhere, a TA without a section)."""
    if not course.tas_see_own_section or not user.is_authenticated or user.is_superuser:
        return None
    row = Enrollment.objects.filter(course=course, user=user).values_list("role", "section").first()
    if row is None or row[0] != Enrollment.Role.TA or not row[1]:
        return None
    return row[1]


def can_view_submission(*, user: User | AnonymousUser, submission) -> bool:
    """Its author, their team (a team's submission is every member's), and the course's staff (a
    section-scoped TA: of their section's students) see a submission, its jobs and their live events."""
    if not user.is_authenticated:
        return False
    if submission.student_id == user.pk:
        return True
    if submission.team_id and TeamMember.objects.filter(team_id=submission.team_id, user=user).exists():
        return True
    course = submission.assignment.course
    if not is_course_staff(course=course, user=user):
        return False
    section = section_scope(course=course, user=user)
    return (
        section is None
        or Enrollment.objects.filter(course=course, user_id=submission.student_id, section=section).exists()
    )


def is_ranked(*, course_id: int, user_id: int) -> bool:
    """Only the course's students are ranked (a staff test run is not)."""
    return Enrollment.objects.filter(course_id=course_id, user_id=user_id, role=Enrollment.Role.STUDENT).exists()

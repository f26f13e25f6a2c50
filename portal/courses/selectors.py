"""Reads on courses, with the access rules in one place: who may see what."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet
from django.utils import timezone

from portal.courses.models import Assignment, Course, Enrollment

STAFF_ROLES = (Enrollment.Role.TA, Enrollment.Role.INSTRUCTOR)


def course_role(*, course: Course, user: User | AnonymousUser) -> str | None:
    """The user's role in the course ("student", "ta", "instructor"), "admin" for superusers, else None."""
    if not user.is_authenticated:
        return None
    if user.is_superuser:
        return "admin"
    return Enrollment.objects.filter(course=course, user=user).values_list("role", flat=True).first()


def is_course_staff(*, course: Course, user: User | AnonymousUser) -> bool:
    return course_role(course=course, user=user) in (*STAFF_ROLES, "admin")


def can_manage_course(*, course: Course, user: User | AnonymousUser) -> bool:
    """The course's instructors and admins manage it (roster, assignments); TAs do not."""
    return course_role(course=course, user=user) in (Enrollment.Role.INSTRUCTOR, "admin")


def courses_for_user(*, user: User) -> QuerySet[Course]:
    if user.is_superuser:
        return Course.objects.filter(is_active=True)
    return Course.objects.filter(is_active=True, enrollments__user=user).distinct()


def assignments_for_user(*, course: Course, user: User) -> QuerySet[Assignment]:
    """Staff see every assignment; students see the visible ones that have opened."""
    assignments = course.assignments.select_related("lab")
    if is_course_staff(course=course, user=user):
        return assignments
    return assignments.filter(is_visible=True, opens_at__lte=timezone.now())


def assignment_for_user(*, course_slug: str, assignment_slug: str, user: User) -> Assignment | None:
    assignment = (
        Assignment.objects.select_related("course", "lab")
        .filter(course__slug=course_slug, slug=assignment_slug, course__is_active=True)
        .first()
    )
    if assignment is None or course_role(course=assignment.course, user=user) is None:
        return None
    if assignments_for_user(course=assignment.course, user=user).filter(pk=assignment.pk).exists():
        return assignment
    return None

"""Reads on courses; who may see what is portal/access.py's."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.utils import timezone

from portal.access import can_see_assignment, is_course_staff
from portal.courses.models import Assignment, Course


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


def student_sections(*, course: Course) -> list[str]:
    """The sections the course's students are in, sorted."""
    sections = course.enrollments.filter(role="student").exclude(section="").values_list("section", flat=True)
    return sorted(set(sections))


def changed_fields(model, pk: int, fields: list[str]):
    """Call before a form saves an instance: returns a function that, after the save, lists which
    of ``fields`` the save changed (read from the database, not from what the form was sent)."""
    before = model.objects.filter(pk=pk).values(*fields).get()

    def after(instance) -> list[str]:
        return [name for name in fields if instance.serializable_value(name) != before[name]]

    return after


def assignment_for_user(*, course_slug: str, assignment_slug: str, user: User) -> Assignment | None:
    assignment = (
        Assignment.objects.select_related("course", "lab")
        .filter(course__slug=course_slug, slug=assignment_slug, course__is_active=True)
        .first()
    )
    if assignment is None or not can_see_assignment(assignment=assignment, user=user):
        return None
    return assignment

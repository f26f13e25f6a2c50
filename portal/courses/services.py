"""Writes on courses, enrollments and assignments."""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.models import User
from django.db import transaction

from portal.catalog.models import Lab
from portal.courses.models import Assignment, Course, Enrollment


def course_create(*, slug: str, title: str, description: str = "") -> Course:
    return Course.objects.create(slug=slug, title=title, description=description)


def enrollment_create(*, course: Course, user: User, role: str = Enrollment.Role.STUDENT) -> Enrollment:
    enrollment, _ = Enrollment.objects.update_or_create(course=course, user=user, defaults={"role": role})
    return enrollment


@transaction.atomic
def assignment_create(
    *,
    course: Course,
    lab: Lab,
    due_at: datetime,
    opens_at: datetime | None = None,
    slug: str | None = None,
    title: str | None = None,
    is_visible: bool = True,
    accepts_late: bool = False,
) -> Assignment:
    fields = {
        "lab": lab,
        "due_at": due_at,
        "title": title or lab.title,
        "is_visible": is_visible,
        "accepts_late": accepts_late,
    }
    if opens_at is not None:
        fields["opens_at"] = opens_at
    return Assignment.objects.create(course=course, slug=slug or lab.slug.replace("_", "-"), **fields)

"""Writes on courses, enrollments, assignments and extensions."""

from __future__ import annotations

import re
from datetime import datetime

from django.contrib.auth.models import User
from django.db import transaction

from portal.catalog.models import Lab
from portal.courses.audit import Action, audit
from portal.courses.models import Assignment, Course, Enrollment, Extension
from portal.submissions.services import submissions_refresh_lateness


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
    **policy,
) -> Assignment:
    """``policy``: the assignment's other fields (cutoff_at, late_policy, max_submissions, ...)."""
    fields = {"lab": lab, "due_at": due_at, "title": title or lab.title, "is_visible": is_visible, **policy}
    if opens_at is not None:
        fields["opens_at"] = opens_at
    return Assignment.objects.create(course=course, slug=slug or lab.slug.replace("_", "-"), **fields)


@transaction.atomic
def extension_grant(
    *,
    assignment: Assignment,
    students: list[User],
    due_at: datetime,
    reason: str,
    granted_by: User,
    cutoff_at: datetime | None = None,
) -> list[Extension]:
    """Give each student their own due time (and cutoff) on the assignment, replacing an earlier
    extension; their submissions' late days follow, and the grant goes into the audit log."""
    granted = []
    for student in students:
        extension, _ = Extension.objects.update_or_create(
            assignment=assignment,
            student=student,
            defaults={"due_at": due_at, "cutoff_at": cutoff_at, "reason": reason, "granted_by": granted_by},
        )
        granted.append(extension)
    submissions_refresh_lateness(assignment=assignment, student_ids=[s.pk for s in students])
    course = assignment.course
    names = ", ".join(s.username for s in students)
    audit(
        course=course,
        actor=granted_by,
        action=Action.EXTENSION_GRANT,
        summary=f"{assignment.title}: due {course.local(due_at)} for {names} ({reason})"[:500],
        assignment=assignment.slug,
        students=[s.username for s in students],
        due_at=due_at.isoformat(),
        cutoff_at=cutoff_at.isoformat() if cutoff_at else None,
        reason=reason,
    )
    return granted


@transaction.atomic
def extension_revoke(*, extension: Extension, revoked_by: User) -> None:
    """Take an extension back: the student is on the assignment's own times again."""
    assignment, student = extension.assignment, extension.student
    extension.delete()
    submissions_refresh_lateness(assignment=assignment, student_ids=[student.pk])
    audit(
        course=assignment.course,
        actor=revoked_by,
        action=Action.EXTENSION_REVOKE,
        summary=f"{assignment.title}: extension of {student.username} revoked",
        assignment=assignment.slug,
        student=student.username,
    )


def assignment_saved(*, assignment: Assignment, actor: User, created: bool, changed: list[str]) -> None:
    """After the staff form saved an assignment: late days follow a moved due time; audit it."""
    if "due_at" in changed and not created:
        submissions_refresh_lateness(assignment=assignment)
    course = assignment.course
    what = "assigned" if created else f"changed ({', '.join(changed) or 'nothing'})"
    audit(
        course=course,
        actor=actor,
        action=Action.ASSIGNMENT,
        summary=f"{assignment.title} ({assignment.lab.slug}) {what}; due {course.local(assignment.due_at)}",
        assignment=assignment.slug,
        fields=changed,
    )


NICKNAME = re.compile(r"^[\w][\w .\-]{0,29}$")


class NicknameRefused(Exception):
    """The nickname cannot be used; the message says why."""


def nickname_set(*, enrollment: Enrollment, nickname: str) -> None:
    """A student's name on the course's leaderboards (empty: their username). It must not be
    another member's username or another student's nickname, so nobody can pass for someone else."""
    nickname = " ".join(nickname.split())
    if nickname and not NICKNAME.match(nickname):
        raise NicknameRefused("Use up to 30 letters, digits, spaces, dots, dashes or underscores.")
    if nickname:
        members = Enrollment.objects.filter(course_id=enrollment.course_id).exclude(pk=enrollment.pk)
        if members.filter(user__username__iexact=nickname).exists() or (
            members.filter(nickname__iexact=nickname).exists()
        ):
            raise NicknameRefused(f"'{nickname}' is taken in this course; choose another.")
    enrollment.nickname = nickname
    enrollment.save(update_fields=["nickname"])

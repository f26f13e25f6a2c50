"""Grades out: each student's grade per assignment (the submission that counts, late penalty,
override), the gradebook's rows, and its CSV export (the page's and ``manage.py grades export``'s)."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q

from portal.courses.audit import Action, audit
from portal.courses.models import Assignment, Course, Enrollment, GradeOverride
from portal.courses.policies import Grade, Graded, grade_for
from portal.courses.teams import members_by_team
from portal.lti.services import lti_grade_changed
from portal.submissions.models import Job

FIXED_COLUMNS = ["username", "email", "section"]


def graded_submissions(*, assignments: list[Assignment], student_ids: list[int] | None = None):
    """Each (student, assignment)'s graded submissions (on a team assignment, their team's), not
    disqualified, with the score of their latest grading that finished with one (a rejudge's
    replaces the first; one still in progress, an infrastructure error or a cancelled one has none)."""
    results = Job.results().filter(submission__assignment__in=assignments, submission__disqualified_at__isnull=True)
    if student_ids is not None:  # their own submissions, and their teams'
        results = results.filter(
            Q(submission__student_id__in=student_ids) | Q(submission__team__members__user_id__in=student_ids)
        ).distinct()
    rows = list(
        results.values_list(
            "submission_id",
            "submission__assignment_id",
            "submission__student_id",
            "submission__team_id",
            "submission__created_at",
            "score",
            "submission__late_days",
            "submission__marked_final",
        )
    )
    # a team's submission is each of its (current) members'
    members = members_by_team(team_ids={row[3] for row in rows if row[3]})
    found: dict[tuple[int, int], list[Graded]] = defaultdict(list)
    for sid, assignment_id, student_id, team_id, created_at, score, late_days, marked in rows:
        for owner in members.get(team_id, []) if team_id else [student_id]:
            found[(owner, assignment_id)].append(Graded(sid, created_at, score, late_days, marked))
    return found


def grade_of(*, assignment: Assignment, student: User) -> Grade:
    """One student's grade on one assignment."""
    graded = graded_submissions(assignments=[assignment], student_ids=[student.pk])
    override = GradeOverride.objects.filter(assignment=assignment, student=student).first()
    return grade_for(assignment, graded.get((student.pk, assignment.pk), []), override)


@dataclass
class Row:
    enrollment: Enrollment
    grades: list[Grade] = field(default_factory=list)  # in the gradebook's assignment order

    @property
    def user(self) -> User:
        return self.enrollment.user

    @property
    def late_days(self) -> int:
        return sum(g.late_days for g in self.grades)


@dataclass
class Gradebook:
    course: Course
    assignments: list[Assignment]
    rows: list[Row]


def gradebook(*, course: Course, section: str | None = None, assignment_slug: str | None = None) -> Gradebook:
    """Students x assignments of a course (optionally one section, or one assignment)."""
    assignments = list(course.assignments.select_related("lab").order_by("due_at", "title"))
    if assignment_slug is not None:
        assignments = [a for a in assignments if a.slug == assignment_slug]
    enrollments = course.enrollments.filter(role=Enrollment.Role.STUDENT).select_related("user")
    if section:
        enrollments = enrollments.filter(section=section)
    enrollments = list(enrollments.order_by("user__username"))
    graded = graded_submissions(assignments=assignments, student_ids=[e.user_id for e in enrollments])
    overrides = {(o.student_id, o.assignment_id): o for o in GradeOverride.objects.filter(assignment__in=assignments)}
    rows = [
        Row(
            e,
            [grade_for(a, graded.get((e.user_id, a.pk), []), overrides.get((e.user_id, a.pk))) for a in assignments],
        )
        for e in enrollments
    ]
    return Gradebook(course, assignments, rows)


def sort_rows(book: Gradebook, key: str) -> None:
    """Sort by ``username``, ``section``, ``late_days`` or an assignment's slug (highest first;
    missing grades last). A leading ``-`` reverses."""
    reverse = key.startswith("-")
    key = key.lstrip("-")
    slugs = [a.slug for a in book.assignments]
    if key in slugs:
        i = slugs.index(key)
        have = [r for r in book.rows if r.grades[i].final is not None]
        have.sort(key=lambda r: (-r.grades[i].final, r.user.username), reverse=reverse)
        book.rows = have + [r for r in book.rows if r.grades[i].final is None]
    elif key == "section":
        book.rows.sort(key=lambda r: (r.enrollment.section, r.user.username), reverse=reverse)
    elif key == "late_days":
        book.rows.sort(key=lambda r: (-r.late_days, r.user.username), reverse=reverse)
    else:
        book.rows.sort(key=lambda r: r.user.username, reverse=reverse)


def _cell(grade: Grade) -> str:
    return "" if grade.final is None else f"{grade.final:.2f}".rstrip("0").rstrip(".")


def _safe(text: str) -> str:
    """A spreadsheet reads a cell starting with = + - @ as a formula: a student's name must not be one."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def export_csv(book: Gradebook) -> str:
    """``username,email,section`` then one column per assignment (its slug): the final score,
    empty where the student has no graded submission."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*FIXED_COLUMNS, *(a.slug for a in book.assignments)])
    for row in book.rows:
        u = row.user
        writer.writerow([_safe(u.username), _safe(u.email), _safe(row.enrollment.section), *map(_cell, row.grades)])
    return out.getvalue()


@transaction.atomic
def override_set(*, assignment: Assignment, student: User, score: float | None, reason: str, by: User) -> None:
    """Set (or, with ``score`` None, remove) an instructor's final score; audited with the reason."""
    before = GradeOverride.objects.filter(assignment=assignment, student=student).first()
    if score is None:
        if before is None:
            return
        before.delete()
        summary = f"{assignment.title}: override of {student.username} removed ({reason})"
    else:
        GradeOverride.objects.update_or_create(
            assignment=assignment, student=student, defaults={"score": score, "reason": reason, "set_by": by}
        )
        summary = f"{assignment.title}: {student.username} set to {score:g} ({reason})"
    audit(
        course=assignment.course,
        actor=by,
        action=Action.GRADE_OVERRIDE,
        summary=summary,
        assignment=assignment.slug,
        student=student.username,
        score=score,
        previous=before.score if before else None,
        reason=reason,
    )
    lti_grade_changed(assignment_id=assignment.pk, student_id=student.pk)  # to the LMS, where linked

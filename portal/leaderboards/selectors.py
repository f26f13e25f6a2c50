"""Ranked leaderboards: score first, then the lab's metric in its direction, then who got there first.

What a viewer sees: staff see the live ranking with real names (and nicknames); students see
nicknames where their classmates chose one, and, in a course that freezes leaderboards, after the
due time only what was submitted by the due time (the final ranking).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import F
from django.utils import timezone

from portal.access import is_course_staff
from portal.courses.models import Assignment, Enrollment
from portal.leaderboards.models import LeaderboardEntry
from portal.leaderboards.services import best_results
from portal.submissions.models import Job


@dataclass(frozen=True)
class Board:
    rows: list[dict]
    final: bool  # frozen at the due time: the final ranking
    staff: bool


def leaderboard_for_viewer(*, assignment: Assignment, user) -> Board:
    staff = is_course_staff(course=assignment.course, user=user)
    frozen = assignment.course.freeze_leaderboards and timezone.now() > assignment.due_at
    if frozen and not staff:
        rows = leaderboard_final(assignment=assignment)
    else:
        rows = leaderboard_for_assignment(assignment=assignment)
    nicknames = dict(
        Enrollment.objects.filter(course_id=assignment.course_id)
        .exclude(nickname="")
        .values_list("user_id", "nickname")
    )
    for row in rows:
        student_id = row.pop("student_id")
        if student_id is None:  # a team's row shows its name
            continue
        nickname = nicknames.get(student_id, "")
        if staff:
            row["student"] = f"{row['student']} ({nickname})" if nickname else row["student"]
        elif nickname:
            row["student"] = nickname
    return Board(rows, frozen and not staff, staff)


def _who(team, student) -> dict:
    """Whose row: a team's (named, no student to look a nickname up for), else a student's."""
    if team is not None:
        return {"student_id": None, "username": f"team {team.name}"}
    return {"student_id": student.pk, "username": student.username}


def _row(rank: int, *, student_id: int | None, username: str, score, metric, job: Job | None, achieved_at) -> dict:
    """One ranked row: a student's (``student_id``), or a team's (None, its name as ``username``)."""
    return {
        "rank": rank,
        "student_id": student_id,
        "student": username,
        "score": score,
        "metric": metric,
        # A correct GPU-lab result graded without a GPU has no metric, and says why.
        "unranked": ((job.result or {}).get("unranked", "") if job else "") if metric is None else "",
        "job_id": job.pk if job else None,
        "achieved_at": achieved_at.isoformat(),
    }


def leaderboard_for_assignment(*, assignment: Assignment) -> list[dict]:
    metric_order = (
        F("metric").asc(nulls_last=True)
        if assignment.lab.metric_direction == "lower"
        else F("metric").desc(nulls_last=True)
    )
    entries = (
        LeaderboardEntry.objects.filter(assignment=assignment)
        .select_related("student", "team", "job")
        .order_by("-score", metric_order, "achieved_at")
    )
    return [
        _row(
            rank,
            **_who(e.team, e.student),
            score=e.score,
            metric=e.metric,
            job=e.job,
            achieved_at=e.achieved_at,
        )
        for rank, e in enumerate(entries, start=1)
    ]


def leaderboard_final(*, assignment: Assignment) -> list[dict]:
    """The final ranking: each student's (team's) best result among what they submitted by their
    own due time (an extension's, a team's), disqualified ones left out. A student still within an
    extension can still enter it."""
    students = Enrollment.objects.filter(course_id=assignment.course_id, role=Enrollment.Role.STUDENT)
    best = best_results(assignment=assignment, student_ids=students.values("user_id"), on_time=True)
    direction = assignment.lab.metric_direction or "higher"

    def order(job: Job):
        missing = job.metric is None
        key = 0.0 if missing else (job.metric if direction == "lower" else -job.metric)
        return (-job.score, missing, key, job.finished_at)

    return [
        _row(
            rank,
            **_who(j.submission.team, j.submission.student),
            score=j.score,
            metric=j.metric,
            job=j,
            achieved_at=j.finished_at,
        )
        for rank, j in enumerate(sorted(best.values(), key=order), start=1)
    ]

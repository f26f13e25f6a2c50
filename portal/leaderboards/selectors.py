"""Ranked leaderboards: score first, then the lab's metric in its direction, then who got there first."""

from __future__ import annotations

from django.db.models import F

from portal.courses.models import Assignment
from portal.leaderboards.models import LeaderboardEntry


def leaderboard_for_assignment(*, assignment: Assignment) -> list[dict]:
    metric_order = (
        F("metric").asc(nulls_last=True)
        if assignment.lab.metric_direction == "lower"
        else F("metric").desc(nulls_last=True)
    )
    entries = (
        LeaderboardEntry.objects.filter(assignment=assignment)
        .select_related("student", "job")
        .order_by("-score", metric_order, "achieved_at")
    )
    rows = []
    for rank, entry in enumerate(entries, start=1):
        rows.append(
            {
                "rank": rank,
                "student": entry.student.username,
                "score": entry.score,
                "metric": entry.metric,
                # A correct GPU-lab result graded without a GPU has no metric, and says why.
                "unranked": ((entry.job.result or {}).get("unranked", "") if entry.job else "")
                if entry.metric is None
                else "",
                "job_id": entry.job_id,
                "achieved_at": entry.achieved_at.isoformat(),
            }
        )
    return rows

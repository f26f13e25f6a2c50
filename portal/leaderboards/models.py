from django.conf import settings
from django.db import models


class LeaderboardEntry(models.Model):
    """A student's (or, on a team assignment, a team's) best result on an assignment: highest
    score, then the lab's metric."""

    assignment = models.ForeignKey("courses.Assignment", on_delete=models.CASCADE, related_name="leaderboard")
    student = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # a team assignment's entry is its team's (``student``: who submitted the best result)
    team = models.ForeignKey("courses.Team", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey("submissions.Job", on_delete=models.CASCADE, related_name="+")
    score = models.FloatField()
    metric = models.FloatField(null=True, blank=True)
    achieved_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["assignment", "student"], condition=models.Q(team__isnull=True), name="one_entry_per_student"
            ),
            models.UniqueConstraint(
                fields=["assignment", "team"], condition=models.Q(team__isnull=False), name="one_entry_per_team"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.student} on {self.assignment}: {self.score}"

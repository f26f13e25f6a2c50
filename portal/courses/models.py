import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from portal.courses.policies import Counts, LatePolicy


def default_time_zone() -> str:
    return settings.TIME_ZONE


def validate_time_zone(name: str) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"'{name}' is not a time zone; use a name such as Europe/London or America/New_York.")


class Course(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    is_active = models.BooleanField(default=True)
    time_zone = models.CharField(
        max_length=64,
        default=default_time_zone,
        validators=[validate_time_zone],
        help_text="Due times are set and shown in it, e.g. Europe/London",
    )
    grace_days = models.PositiveSmallIntegerField(
        default=0, help_text="Each student's bank of late days for the term, spent by grace-day assignments"
    )
    freeze_leaderboards = models.BooleanField(
        "freeze leaderboards at the due time",
        default=False,
        help_text="After an assignment's due time, students see the final ranking of what was submitted by then",
    )
    tas_see_own_section = models.BooleanField(
        "TAs see only their section",
        default=False,
        help_text="A TA with a section sees the submissions, grades and extensions of that section's students only",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["title"]

    def __str__(self) -> str:
        return self.title

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)

    def local(self, when) -> str:
        """A time as messages and the audit log say it: in the course's time zone."""
        return f"{timezone.localtime(when, self.tz):%Y-%m-%d %H:%M %Z}"


class Enrollment(models.Model):
    class Role(models.TextChoices):
        STUDENT = "student", "Student"
        TA = "ta", "Teaching assistant"
        INSTRUCTOR = "instructor", "Instructor"

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="enrollments")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="enrollments")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.STUDENT)
    section = models.CharField(max_length=50, blank=True, default="", help_text="e.g. a lab group or recitation")
    nickname = models.CharField(
        max_length=30,
        blank=True,
        default="",
        help_text="Shown to other students on leaderboards instead of the username",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["course", "role", "user__username"]
        constraints = [models.UniqueConstraint(fields=["course", "user"], name="one_enrollment_per_course")]

    def __str__(self) -> str:
        return f"{self.user} in {self.course} as {self.role}"


class Assignment(models.Model):
    """A lab offered in a course, with its window and visibility."""

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="assignments")
    lab = models.ForeignKey("catalog.Lab", on_delete=models.PROTECT, related_name="assignments")
    slug = models.SlugField(max_length=50)
    title = models.CharField(max_length=200)
    opens_at = models.DateTimeField(default=timezone.now)
    due_at = models.DateTimeField()
    cutoff_at = models.DateTimeField(
        null=True, blank=True, help_text="Hard cutoff: nothing is accepted after it, late policy or not"
    )
    is_visible = models.BooleanField(default=True, help_text="Hidden assignments are shown to staff only")
    late_policy = models.CharField(max_length=10, choices=LatePolicy.CHOICES, default=LatePolicy.REFUSE)
    late_penalty_per_day = models.PositiveSmallIntegerField(
        default=10, help_text="Percent of the score lost per day late (penalty policy); 0 accepts late work unpenalised"
    )
    late_penalty_cap = models.PositiveSmallIntegerField(
        default=100, help_text="At most this percent is lost, however late (penalty policy)"
    )
    max_submissions = models.PositiveIntegerField(
        null=True, blank=True, help_text="Graded submissions each student may make in all; empty: no limit"
    )
    submissions_per_hour = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many in any rolling hour; empty: no rate limit"
    )
    counts = models.CharField("submission that counts", max_length=10, choices=Counts.CHOICES, default=Counts.BEST)
    test_visibility = models.JSONField(
        default=list,
        blank=True,
        help_text="[pattern, level] pairs tried before the lab's own (policies.test_visibility)",
    )
    team_size = models.PositiveSmallIntegerField(
        default=1,
        help_text="1: each student on their own; more: done in the course's teams of at most this many, "
        "a team's submission being every member's",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["course", "due_at", "title"]
        constraints = [models.UniqueConstraint(fields=["course", "slug"], name="unique_assignment_slug_per_course")]

    def __str__(self) -> str:
        return f"{self.course.slug}/{self.slug}"


class Team(models.Model):
    """Students who work together on a course's team assignments (``Assignment.team_size`` > 1):
    a team's submission is every member's; its quota, late days and leaderboard row are the team's.
    A student is in at most one team of a course."""

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="teams")
    name = models.CharField(max_length=60)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["course", "name"]
        constraints = [models.UniqueConstraint(fields=["course", "name"], name="unique_team_name_per_course")]

    def __str__(self) -> str:
        return f"team {self.name} of {self.course}"


class TeamMember(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="members")
    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="+")  # one team per course
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="team_memberships")
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team", "user__username"]
        constraints = [models.UniqueConstraint(fields=["course", "user"], name="one_team_per_student_per_course")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team}"


class TeamInvitation(models.Model):
    """A member's invitation of a classmate into their team, until accepted or declined."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="invitations")
    invitee = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="team_invitations")
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["team", "invitee"], name="one_invitation_per_team_invitee")]

    def __str__(self) -> str:
        return f"{self.invitee} invited to {self.team}"


class Extension(models.Model):
    """A student's own due time (and cutoff) for an assignment, granted by staff with a reason."""

    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="extensions")
    student = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="extensions")
    due_at = models.DateTimeField()
    cutoff_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=200)
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="extensions_granted"
    )
    granted_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["assignment", "student__username"]
        constraints = [
            models.UniqueConstraint(fields=["assignment", "student"], name="one_extension_per_student_assignment")
        ]

    def __str__(self) -> str:
        return f"{self.student} on {self.assignment}: due {self.due_at:%Y-%m-%d %H:%M}"


class GradeOverride(models.Model):
    """An instructor's final score for a student on an assignment, with the reason; it wins over
    the computed grade until it is removed."""

    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="overrides")
    student = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="grade_overrides")
    score = models.FloatField()
    reason = models.CharField(max_length=200)
    set_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    set_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["assignment", "student"], name="one_override_per_student")]

    def __str__(self) -> str:
        return f"{self.student} on {self.assignment}: {self.score} ({self.reason})"


class AuditEntry(models.Model):
    """A staff action on a course, kept for its instructors to read; never edited."""

    class Action(models.TextChoices):
        ROSTER_IMPORT = "roster_import", "Roster import"
        ASSIGNMENT = "assignment", "Assignment set"
        COURSE_SETTINGS = "course_settings", "Course settings"
        EXTENSION_GRANT = "extension_grant", "Extension granted"
        EXTENSION_REVOKE = "extension_revoke", "Extension revoked"
        GRADE_OVERRIDE = "grade_override", "Grade overridden"
        DISQUALIFY = "disqualify", "Result disqualified or reinstated"
        REJUDGE = "rejudge", "Rejudge"
        TEAMS = "teams", "Teams set"

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="audit")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    actor_name = models.CharField(max_length=150, help_text="Kept when the account is deleted")
    action = models.CharField(max_length=30, choices=Action.choices)
    summary = models.CharField(max_length=500)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_name}: {self.summary}"

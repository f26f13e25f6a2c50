import uuid

from django.conf import settings
from django.db import models


class Submission(models.Model):
    """What a student handed in: the files, once. Each grading attempt is a Job."""

    class Source(models.TextChoices):
        UPLOAD = "upload", "Upload"
        PASTE = "paste", "Paste"
        CLI = "cli", "Command line"

    assignment = models.ForeignKey("courses.Assignment", on_delete=models.CASCADE, related_name="submissions")
    student = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="submissions")
    # On a team assignment, the team it was made for (by ``student``, one of its members): it is
    # every member's submission, and the team's quota, late days and leaderboard row count it.
    team = models.ForeignKey(
        "courses.Team", null=True, blank=True, on_delete=models.PROTECT, related_name="submissions"
    )
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.UPLOAD)
    is_late = models.BooleanField(default=False)
    marked_final = models.BooleanField(
        default=False, help_text="The student's choice of the submission that counts (when the assignment asks)"
    )
    disqualified_reason = models.CharField(
        max_length=200, blank=True, help_text="Set by an instructor: the result leaves the leaderboard and the grades"
    )
    disqualified_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    disqualified_at = models.DateTimeField(null=True, blank=True)
    late_days = models.PositiveSmallIntegerField(
        default=0, help_text="Days late against the student's due time (kept current when it moves)"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["assignment", "student", "-created_at"])]

    def __str__(self) -> str:
        return f"submission {self.pk} by {self.student} for {self.assignment}"

    @property
    def is_disqualified(self) -> bool:
        return self.disqualified_at is not None


class SubmissionFile(models.Model):
    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="files")
    name = models.CharField(max_length=100)
    content = models.TextField()
    size = models.PositiveIntegerField()

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["submission", "name"], name="unique_file_per_submission")]

    def __str__(self) -> str:
        return self.name


class Job(models.Model):
    """One attempt to grade a submission. Its state is the record of truth (ARCHITECTURE.md)."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        DISPATCHED = "dispatched", "Dispatched"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        ERROR = "error", "Error"
        TIMED_OUT = "timed_out", "Timed out"
        CANCELLED = "cancelled", "Cancelled"

    class Kind(models.TextChoices):
        SUBMISSION = "submission", "Submission"  # a student's (or staff's) own: dispatched at once
        REJUDGE = "rejudge", "Rejudge"  # staff regrade: dispatched only when no submission waits

    FINAL_STATES = frozenset({State.SUCCEEDED, State.FAILED, State.ERROR, State.TIMED_OUT, State.CANCELLED})
    # gradings that ended with a score of the submission's own (not the infrastructure's fault)
    SCORED_STATES = frozenset({State.SUCCEEDED, State.FAILED, State.TIMED_OUT})
    ACTIVE_STATES = frozenset({State.QUEUED, State.DISPATCHED, State.RUNNING})

    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="jobs")
    attempt = models.PositiveSmallIntegerField(default=1)
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.SUBMISSION)
    state = models.CharField(max_length=12, choices=State.choices, default=State.QUEUED, db_index=True)
    seed = models.BigIntegerField(help_text="Secret: the cases are generated from it")
    # Names the job's event stream. Job ids repeat when a database is reset while Redis keeps old
    # streams (or two portals share a Redis); a random token keeps one job from replaying another's.
    stream_token = models.UUIDField(default=uuid.uuid4, editable=False)
    resource_class = models.CharField(max_length=20, default="cpu")
    lab_version = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    recorded_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    score = models.FloatField(null=True, blank=True)
    metric = models.FloatField(null=True, blank=True)
    reason = models.CharField(max_length=40, blank=True)
    summary = models.TextField(blank=True)
    output_tail = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)
    events_archived = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["state", "resource_class", "created_at"])]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.state})"

    @property
    def is_final(self) -> bool:
        return self.state in self.FINAL_STATES

    @classmethod
    def results(cls) -> models.QuerySet:
        """Each submission's result: its latest grading that ended with a score (a rejudge's
        replaces the first; one in progress, errored or cancelled is none)."""
        scored = cls.objects.filter(state__in=cls.SCORED_STATES, score__isnull=False)
        latest = scored.filter(submission=models.OuterRef("submission")).order_by("-attempt").values("pk")[:1]
        return scored.filter(pk=models.Subquery(latest))

    @property
    def events_stream(self) -> str:
        """The Redis Stream the worker publishes this job's events to (named in the job message)."""
        return f"aisys:job:{self.pk}:{self.stream_token.hex}:events"


class JobEvent(models.Model):
    """An event of a finished job, archived from its Redis Stream so the log outlives the stream."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=20)
    ts = models.FloatField()
    data = models.JSONField()

    class Meta:
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="unique_event_seq_per_job")]

    def __str__(self) -> str:
        return f"job {self.job_id} event {self.seq} ({self.type})"


class Rejudge(models.Model):
    """An instructor's regrade of an assignment's submissions (after a lab's version changes, say):
    one new rejudge job per submission, run after students' own jobs."""

    class Scope(models.TextChoices):
        ALL = "all", "All submissions"
        FINAL = "final", "Each student's submission that counts"
        SELECTED = "selected", "Selected submissions"

    assignment = models.ForeignKey("courses.Assignment", on_delete=models.CASCADE, related_name="rejudges")
    scope = models.CharField(max_length=10, choices=Scope.choices)
    lab_version = models.PositiveIntegerField()
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"rejudge {self.pk} of {self.assignment} ({self.scope})"


class RejudgeItem(models.Model):
    """One submission of a rejudge: its score before, and the job that regrades it."""

    rejudge = models.ForeignKey(Rejudge, on_delete=models.CASCADE, related_name="items")
    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="+")
    before_score = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["submission_id"]

    def __str__(self) -> str:
        return f"{self.rejudge}: submission {self.submission_id}"

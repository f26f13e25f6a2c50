from django.conf import settings
from django.db import models


class Lab(models.Model):
    """A lab of the catalog as last synced from labs/<slug>/ (``manage.py sync_labs``)."""

    DIRECTIONS = [("lower", "lower is better"), ("higher", "higher is better")]

    slug = models.SlugField(max_length=50, unique=True)
    title = models.CharField(max_length=200)
    summary = models.TextField(blank=True)
    version = models.PositiveIntegerField()
    content_hash = models.CharField(max_length=64)
    entry = models.CharField(max_length=100)
    allowed_files = models.JSONField(default=list)
    resource_class = models.CharField(max_length=20, default="cpu")
    limits = models.JSONField(default=dict)
    max_file_bytes = models.PositiveIntegerField(default=256 * 1024)
    metric_name = models.CharField(max_length=100, blank=True)
    metric_unit = models.CharField(max_length=20, blank=True)
    metric_direction = models.CharField(max_length=10, choices=DIRECTIONS, blank=True)
    source_course = models.CharField(max_length=200, blank=True)
    readme = models.TextField(blank=True)
    readme_html = models.TextField(blank=True)
    starter_files = models.JSONField(default=dict)
    test_visibility = models.JSONField(
        default=list, blank=True, help_text="lab.toml's [visibility]: [pattern, level] pairs, first match wins"
    )
    is_available = models.BooleanField(default=True, help_text="False once the folder is gone from labs/")
    synced_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return f"{self.slug} v{self.version}"


class LabVersion(models.Model):
    """Every (version, content) of a lab that was ever synced, so a result can name what graded it."""

    lab = models.ForeignKey(Lab, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    content_hash = models.CharField(max_length=64)
    synced_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["lab", "-synced_at"]
        constraints = [
            models.UniqueConstraint(fields=["lab", "version", "content_hash"], name="unique_lab_version_content")
        ]

    def __str__(self) -> str:
        return f"{self.lab.slug} v{self.version} ({self.content_hash[:10]})"


class LabUpload(models.Model):
    """A lab an instructor uploaded as a zip: checked on a worker before it can be published."""

    class State(models.TextChoices):
        CHECKING = "checking", "Being checked"
        PASSED = "passed", "Check passed"
        FAILED = "failed", "Check failed"
        PUBLISHED = "published", "Published"

    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    slug = models.SlugField(max_length=50)
    version = models.PositiveIntegerField()
    title = models.CharField(max_length=200)
    resource_class = models.CharField(max_length=20, default="cpu")
    archive = models.BinaryField()
    archive_sha256 = models.CharField(max_length=64)
    state = models.CharField(max_length=12, choices=State.choices, default=State.CHECKING)
    report = models.JSONField(null=True, blank=True, help_text="lab check's outcome per solution")
    message = models.TextField(blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.slug} v{self.version} ({self.state})"

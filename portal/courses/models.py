from django.conf import settings
from django.db import models
from django.utils import timezone


class Course(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["title"]

    def __str__(self) -> str:
        return self.title


class Enrollment(models.Model):
    class Role(models.TextChoices):
        STUDENT = "student", "Student"
        TA = "ta", "Teaching assistant"
        INSTRUCTOR = "instructor", "Instructor"

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="enrollments")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="enrollments")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.STUDENT)
    section = models.CharField(max_length=50, blank=True, default="", help_text="e.g. a lab group or recitation")
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
    is_visible = models.BooleanField(default=True, help_text="Hidden assignments are shown to staff only")
    accepts_late = models.BooleanField(default=False, help_text="Accept submissions after the due time, marked late")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["course", "due_at", "title"]
        constraints = [models.UniqueConstraint(fields=["course", "slug"], name="unique_assignment_slug_per_course")]

    def __str__(self) -> str:
        return f"{self.course.slug}/{self.slug}"

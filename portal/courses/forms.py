"""Staff forms of a course: an assignment's lab, window and visibility."""

from __future__ import annotations

from django import forms
from django.utils.text import slugify

from portal.catalog.models import Lab
from portal.courses.models import Assignment, Course

WHEN = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


class AssignmentForm(forms.ModelForm):
    """Offer a published lab in a course, or change an assignment's window (its lab stays)."""

    class Meta:
        model = Assignment
        fields = ["lab", "title", "slug", "opens_at", "due_at", "is_visible", "accepts_late"]
        widgets = {"opens_at": WHEN, "due_at": WHEN}
        help_texts = {
            "slug": "In the assignment's address; left empty, made from the lab's name.",
            "title": "Left empty, the lab's title.",
            "opens_at": "In the course's time zone.",
            "due_at": "In the course's time zone.",
        }

    def __init__(self, *args, course: Course, **kwargs):
        super().__init__(*args, **kwargs)
        self.course = self.instance.course = course
        self.fields["lab"].queryset = Lab.objects.filter(is_available=True).order_by("title")
        self.fields["slug"].required = self.fields["title"].required = False
        for name in ("opens_at", "due_at"):
            self.fields[name].input_formats = ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"]
        if self.instance.pk:
            self.fields["lab"].disabled = True  # its submissions were graded against this lab

    def clean(self):
        data = super().clean()
        lab = data.get("lab")
        if lab is not None:
            data["title"] = data.get("title") or lab.title
            data["slug"] = data.get("slug") or slugify(lab.slug.replace("_", "-"))
        opens, due = data.get("opens_at"), data.get("due_at")
        if opens and due and due <= opens:
            self.add_error("due_at", "The due time must come after the opening time.")
        slug = data.get("slug")
        taken = Assignment.objects.filter(course=self.course, slug=slug).exclude(pk=self.instance.pk)
        if slug and taken.exists():
            self.add_error("slug", f"The course has an assignment '{slug}' already; choose another.")
        return data


class CourseForm(forms.ModelForm):
    """A new course (site admins), with its first instructor: an account, or a new one invited."""

    instructor_username = forms.CharField(required=False, max_length=150, label="First instructor's username")
    instructor_email = forms.EmailField(required=False, label="Their email (for a new account's invitation)")

    class Meta:
        model = Course
        fields = ["slug", "title", "description"]
        help_texts = {"slug": "In the course's address, e.g. sys-fall-2027."}

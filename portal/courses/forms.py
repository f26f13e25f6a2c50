"""Staff forms of a course: an assignment's lab, window, late policy and quota; the course's
settings; extensions."""

from __future__ import annotations

from django import forms
from django.utils.text import slugify

from portal.catalog.models import Lab
from portal.courses.models import Assignment, Course
from portal.courses.policies import LatePolicy, visibility_rules_format, visibility_rules_parse
from portal.courses.selectors import student_sections

POLICY_DEFAULTED = ("late_policy", "late_penalty_per_day", "late_penalty_cap", "counts", "team_size")
WHEN = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


class AssignmentForm(forms.ModelForm):
    """Offer a published lab in a course, or change an assignment's window (its lab stays)."""

    # the model's JSON rules, as staff type them: one "pattern = level" per line
    test_visibility = forms.CharField(required=False, strip=False)

    class Meta:
        model = Assignment
        fields = [
            "lab",
            "title",
            "slug",
            "opens_at",
            "due_at",
            "cutoff_at",
            "is_visible",
            "late_policy",
            "late_penalty_per_day",
            "late_penalty_cap",
            "max_submissions",
            "submissions_per_hour",
            "counts",
            "test_visibility",
            "team_size",
        ]
        widgets = {"opens_at": WHEN, "due_at": WHEN, "cutoff_at": WHEN}

        help_texts = {
            "slug": "In the assignment's address; left empty, made from the lab's name.",
            "title": "Left empty, the lab's title.",
            "opens_at": "In the course's time zone.",
            "due_at": "In the course's time zone.",
            "cutoff_at": "In the course's time zone. Empty: late work (if the policy takes it) is accepted until "
            "the course ends.",
        }

    def __init__(self, *args, course: Course, **kwargs):
        super().__init__(*args, **kwargs)
        self.course = self.instance.course = course
        self.fields["lab"].queryset = Lab.objects.filter(is_available=True).order_by("title")
        self.fields["slug"].required = self.fields["title"].required = False
        for name in ("opens_at", "due_at", "cutoff_at"):
            self.fields[name].input_formats = ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"]
        for name in POLICY_DEFAULTED:  # a form (or a script) that leaves them out gets the defaults
            self.fields[name].required = False
        if self.instance.pk:
            self.fields["lab"].disabled = True  # its submissions were graded against this lab
        visibility = self.fields["test_visibility"]
        visibility.widget = forms.Textarea(attrs={"rows": 3, "cols": 50, "placeholder": "edge_* = after_due"})
        visibility.label = "Test visibility"
        lab_rules = visibility_rules_format(self.instance.lab.test_visibility) if self.instance.lab_id else ""
        visibility.help_text = (
            "One 'test name pattern = visible | after_due | hidden' per line, tried before the lab's own rules "
            f"({'the lab has: ' + lab_rules.replace(chr(10), '; ') if lab_rules else 'the lab has none'}). "
            "Hidden tests show students their name and points only; after_due ones show fully once the student "
            "can no longer submit."
        )
        self.initial["test_visibility"] = visibility_rules_format(self.instance.test_visibility)

    def clean_test_visibility(self) -> list[list[str]]:
        try:
            return visibility_rules_parse(self.cleaned_data.get("test_visibility") or "")
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self):
        data = super().clean()
        for name in POLICY_DEFAULTED:
            if data.get(name) in (None, ""):
                data[name] = Assignment._meta.get_field(name).get_default()
        lab = data.get("lab")
        if lab is not None:
            data["title"] = data.get("title") or lab.title
            data["slug"] = data.get("slug") or slugify(lab.slug.replace("_", "-"))
        opens, due = data.get("opens_at"), data.get("due_at")
        if opens and due and due <= opens:
            self.add_error("due_at", "The due time must come after the opening time.")
        cutoff = data.get("cutoff_at")
        if cutoff and due and cutoff < due:
            self.add_error("cutoff_at", "The cutoff cannot come before the due time.")
        for name in ("late_penalty_per_day", "late_penalty_cap"):
            if (data.get(name) or 0) > 100:
                self.add_error(name, "A percentage: at most 100.")
        if not 1 <= (data.get("team_size") or 1) <= 20:
            self.add_error("team_size", "1 (each student on their own) to 20.")
        if data.get("late_policy") == LatePolicy.GRACE and not self.course.grace_days:
            self.add_error(
                "late_policy",
                "The course gives no grace days: set its bank in the course settings first, or choose another policy.",
            )
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


class CourseSettingsForm(forms.ModelForm):
    """What an instructor sets for the whole course: its title, time zone and grace-day bank."""

    class Meta:
        model = Course
        fields = ["title", "description", "time_zone", "grace_days", "freeze_leaderboards", "tas_see_own_section"]


class ExtensionForm(forms.Form):
    """Grant an extension on one assignment to named students, or to every student of a section."""

    assignment = forms.ModelChoiceField(queryset=Assignment.objects.none())
    students = forms.CharField(
        required=False,
        label="Students",
        help_text="Usernames, separated by spaces or commas",
        widget=forms.TextInput(attrs={"size": 40}),
    )
    section = forms.ChoiceField(required=False, label="...or every student of section")
    due_at = forms.DateTimeField(label="New due time", widget=WHEN, help_text="In the course's time zone.")
    cutoff_at = forms.DateTimeField(
        required=False,
        label="New cutoff",
        widget=WHEN,
        help_text="Empty: the assignment's cutoff, or the new due time if that is later.",
    )
    reason = forms.CharField(max_length=200, help_text="Shown to the student, e.g. 'medical note'")

    def __init__(self, *args, course: Course, section: str | None = None, **kwargs):
        """``section``: a section-scoped TA's; only its students can be named."""
        super().__init__(*args, **kwargs)
        self.course = course
        self.scope = section
        self.fields["assignment"].queryset = course.assignments.order_by("due_at")
        self.fields["assignment"].to_field_name = "slug"
        sections = [section] if section is not None else student_sections(course=course)
        self.fields["section"].choices = [("", "(none)"), *((s, s) for s in sections)]
        for name in ("due_at", "cutoff_at"):
            self.fields[name].input_formats = ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"]

    def clean(self):
        data = super().clean()
        names = [n for n in (data.get("students") or "").replace(",", " ").split() if n]
        section = data.get("section")
        if bool(names) == bool(section):
            raise forms.ValidationError("Name the students, or choose a section (one of the two).")
        enrolled = self.course.enrollments.filter(role="student").select_related("user")
        if self.scope is not None:
            enrolled = enrolled.filter(section=self.scope)
        if section:
            data["users"] = [e.user for e in enrolled.filter(section=section)]
        else:
            found = {e.user.username: e.user for e in enrolled.filter(user__username__in=names)}
            unknown = [n for n in names if n not in found]
            if unknown:
                where = f"section {self.scope} of this course" if self.scope else "this course"
                self.add_error("students", f"Not students of {where}: {', '.join(unknown)}.")
            data["users"] = [found[n] for n in dict.fromkeys(names) if n in found]
        assignment, due, cutoff = data.get("assignment"), data.get("due_at"), data.get("cutoff_at")
        if assignment and due and due <= assignment.opens_at:
            self.add_error("due_at", "The new due time must come after the assignment opens.")
        if due and cutoff and cutoff < due:
            self.add_error("cutoff_at", "The cutoff cannot come before the new due time.")
        return data


class OverrideForm(forms.Form):
    """An instructor's final score for a student on an assignment; an empty score removes it."""

    student = forms.CharField(max_length=150, label="Student (username)")
    assignment = forms.ModelChoiceField(queryset=Assignment.objects.none(), to_field_name="slug")
    score = forms.FloatField(required=False, min_value=0, max_value=100, help_text="Empty: remove the override")
    reason = forms.CharField(max_length=200, help_text="Kept in the audit log, e.g. 'regrade request #12'")

    def __init__(self, *args, course: Course, **kwargs):
        super().__init__(*args, **kwargs)
        self.course = course
        self.fields["assignment"].queryset = course.assignments.order_by("due_at")

    def clean_student(self):
        name = self.cleaned_data["student"].strip()
        enrollment = self.course.enrollments.filter(role="student", user__username=name).select_related("user").first()
        if enrollment is None:
            raise forms.ValidationError(f"{name} is not a student of this course.")
        return enrollment.user

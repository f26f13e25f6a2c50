"""``manage.py grades export <course-slug> [--assignment <slug>] [--output file.csv]``: the
gradebook as CSV, one row per student: ``username,email,section`` then one column per assignment
(its final score; empty where the student has no graded submission)."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from portal.courses.gradebook import export_csv, gradebook
from portal.courses.models import Course


class Command(BaseCommand):
    help = "Export a course's final grades as CSV (username,email,section, then one column per assignment)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        export = sub.add_parser("export", help="write the gradebook as CSV")
        export.add_argument("course", help="the course's slug")
        export.add_argument("--assignment", help="only this assignment's column (its slug)")
        export.add_argument("--section", help="only this section's students")
        export.add_argument("--output", type=Path, help="write to this file (default: standard output)")

    def handle(self, *args, action, course, assignment=None, section=None, output=None, **options):
        found = Course.objects.filter(slug=course).first()
        if found is None:
            raise CommandError(f"no course with slug {course!r}")
        if assignment is not None and not found.assignments.filter(slug=assignment).exists():
            known = ", ".join(found.assignments.values_list("slug", flat=True)) or "none"
            raise CommandError(f"{course} has no assignment {assignment!r} (it has: {known})")
        text = export_csv(gradebook(course=found, section=section, assignment_slug=assignment))
        if output is None:
            self.stdout.write(text, ending="")
            return
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {output}: {exc.strerror}") from None
        rows = text.count("\n") - 1
        self.stderr.write(f"{rows} student{'s' if rows != 1 else ''} written to {output}")

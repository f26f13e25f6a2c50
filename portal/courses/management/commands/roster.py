"""``manage.py roster import <course-slug> <file.csv> [--dry-run]``: a course's people from a CSV.

Prints what each line does (portal/courses/roster.py) and a summary line ``created N, updated N,
unchanged N, refused N``; each new account is mailed an invitation. Exit status 0 when every line
was accepted, 1 otherwise (the accepted lines are applied all the same, unless ``--dry-run``).
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from portal.courses.models import Course
from portal.courses.roster import MAX_BYTES, RosterError, audit_import, import_roster, invite_new_accounts


class Command(BaseCommand):
    help = "Import a course roster from CSV (username,email,first_name,last_name,role,section)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        do = sub.add_parser("import", help="create and update the course's accounts and enrollments")
        do.add_argument("course", help="the course's slug")
        do.add_argument("file", type=Path, help="the CSV file")
        do.add_argument("--dry-run", action="store_true", help="show what would change; change nothing")

    def handle(self, *args, action, course, file, dry_run=False, **options):
        found = Course.objects.filter(slug=course).first()
        if found is None:
            raise CommandError(f"no course with slug {course!r}")
        try:
            with file.open("rb") as handle:
                data = handle.read(MAX_BYTES + 1)
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror}") from None
        try:
            roster = import_roster(found, data, dry_run=dry_run)
        except RosterError as exc:
            raise CommandError(f"{file}: {exc}") from None
        for line in roster.lines:
            self.stdout.write(line.describe())
        if not dry_run:
            audit_import(found, roster, actor=None, actor_name="(manage.py roster import)")
            sent = invite_new_accounts(roster)
            if sent:
                self.stdout.write(f"invitations sent to {len(sent)} new accounts")
        self.stdout.write(("dry run, nothing changed: " if dry_run else "") + roster.summary())
        if not roster.all_accepted:
            raise SystemExit(1)

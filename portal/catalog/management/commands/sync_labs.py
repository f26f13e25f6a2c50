from django.core.management.base import BaseCommand, CommandError

from labs import catalog
from labs.catalog import LabError
from portal.catalog.services import lab_sync_all


class Command(BaseCommand):
    help = "Load every lab folder under labs/ into the database (idempotent; tracks versions)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--root", default=None, help=f"folder holding the lab folders (default {catalog.LABS_ROOT})"
        )

    def handle(self, *args, root, **options):
        try:
            report = lab_sync_all(root=root)
        except LabError as exc:
            raise CommandError(str(exc)) from exc
        for label, slugs in (
            ("created", report.created),
            ("updated", report.updated),
            ("unchanged", report.unchanged),
            ("retired", report.retired),
        ):
            if slugs:
                self.stdout.write(f"{label}: {', '.join(slugs)}")
        for warning in report.warnings:
            self.stderr.write(self.style.WARNING(f"warning: {warning}"))

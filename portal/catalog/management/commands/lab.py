"""``manage.py lab check <path>...`` and ``manage.py lab new <slug>``: the lab author's toolkit.

``check`` grades a lab's starter and every shipped solution through the real runner (in a child
process, ``python -m gpu_runner check``: the portal never imports worker code) and compares each
outcome with its ``expected.toml``; exit status 0 only when all of them match. ``new`` writes a
working lab folder to start from (labs/scaffold.py). docs/authoring-labs.md explains the format.
"""

import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from labs import catalog
from labs.scaffold import create_lab


class Command(BaseCommand):
    help = "Lab authoring: 'check' a lab's solutions through the runner, or scaffold a 'new' lab."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        check = actions.add_parser("check", help="grade the starter and every solution; compare with expected.toml")
        check.add_argument("labs", nargs="*", help="lab folders (labs/custom_op) or slugs")
        check.add_argument("--all", action="store_true", help="every lab in the catalog")
        check.add_argument("--only", action="append", help="check only this solution (repeatable)")
        check.add_argument("--json", action="store_true", help="print the checks as JSON")
        new = actions.add_parser("new", help="scaffold a working lab folder to edit")
        new.add_argument("slug", help="lower_snake_case, e.g. flash_attention")
        new.add_argument("--title", help="the lab's title (default: from the slug)")
        new.add_argument("--entry", help="the student's file (default: <slug>.py)")
        new.add_argument("--root", default=None, help=f"where to create it (default {catalog.LABS_ROOT})")

    def handle(self, *args, action, **options):
        if action == "new":
            return self._new(**options)
        labs = list(options["labs"])
        if options["all"]:
            labs += [str(lab.path) for lab in catalog.discover_labs()]
        if not labs:
            raise CommandError("name the labs to check (folders or slugs), or pass --all")
        argv = [sys.executable, "-m", "gpu_runner", "check", *labs]
        for name in options["only"] or ():
            argv += ["--only", name]
        if options["json"]:
            argv.append("--json")
        completed = subprocess.run(argv, cwd=settings.BASE_DIR, check=False)
        if completed.returncode == 2:
            raise CommandError("the runner refused the arguments (see above)")
        if completed.returncode != 0:
            sys.exit(completed.returncode)

    def _new(self, *, slug, title=None, entry=None, root=None, **_):
        try:
            folder = create_lab(slug, Path(root) if root else catalog.LABS_ROOT, title=title, entry=entry)
        except catalog.LabError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Created {folder}: a working lab (write relu(x)) with a correct solution, four wrong ones and a\n"
            f"benchmark cheat. Edit lab.toml, README.md, grader.py, run.py, reference.py, starter/ and\n"
            f"solutions/, then run\n"
            f"  python manage.py lab check {folder}\n"
            f"and python manage.py sync_labs to offer it. See docs/authoring-labs.md."
        )

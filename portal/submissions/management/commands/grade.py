"""``manage.py grade <lab-slug> <file>... [--json]``: grade files through the runner, without the web.

The portal never imports the worker code, so this runs the runner's own command line
(``python -m gpu_runner grade``) in a child process: the very sequence a worker runs.
"""

import subprocess
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Grade files against a lab with the same runner the workers use; exit status 0 when it passes."

    def add_arguments(self, parser):
        parser.add_argument("lab", help="lab slug, e.g. custom_op")
        parser.add_argument("files", nargs="+")
        parser.add_argument("--json", action="store_true", help="print verdict, score, metric and tests as JSON")
        parser.add_argument("--seed", type=int, help="case seed (default: a fresh secret one)")

    def handle(self, *args, lab, files, json=False, seed=None, **options):
        argv = [sys.executable, "-m", "gpu_runner", "grade", lab, *files]
        if json:
            argv.append("--json")
        if seed is not None:
            argv += ["--seed", str(seed)]
        completed = subprocess.run(argv, cwd=settings.BASE_DIR, check=False)
        if completed.returncode == 2:
            raise CommandError("the runner refused the arguments (see above)")
        if completed.returncode != 0:
            sys.exit(completed.returncode)

"""Grade files without the web or a queue: ``python -m gpu_runner grade <lab> <file>... [--json]``.

``manage.py grade`` calls this; instructors and the lab self-tests use it. It runs the very
same grading sequence as the worker, with events printed to the terminal.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path

from gpu_runner.events import TerminalSink
from gpu_runner.grading import grade
from labs.catalog import LabError, find_lab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu_runner")
    commands = parser.add_subparsers(dest="command", required=True)
    grade_cmd = commands.add_parser("grade", help="grade files against a lab")
    grade_cmd.add_argument("lab", help="lab slug, e.g. custom_op")
    grade_cmd.add_argument("files", nargs="+", type=Path)
    grade_cmd.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    grade_cmd.add_argument("--seed", type=int, default=None, help="case seed (default: a random secret)")
    args = parser.parse_args(argv)
    try:
        lab = find_lab(args.lab)
    except LabError as exc:
        parser.error(str(exc))
    files = {}
    for path in args.files:
        if path.name not in lab.allowed_files:
            parser.error(f"{path.name}: this lab accepts only {', '.join(lab.allowed_files)}")
        try:
            files[path.name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"{path}: cannot be read as UTF-8 text ({exc})")
    message = {
        "job_id": f"local-{int(time.time())}",
        "lab": {"slug": lab.slug, "version": lab.version},
        "files": files,
        "limits": lab.limits.as_dict(),
        "seed": args.seed if args.seed is not None else secrets.randbits(62),
    }
    result = grade(message, TerminalSink(quiet=False))
    if args.json:
        shown = {k: result[k] for k in ("verdict", "reason", "score", "metric", "summary", "tests")}
        print(json.dumps(shown, indent=2))
    else:
        print(f"{result['verdict']}: score {result['score']:g}/100. {result['summary']}")
    return 0 if result["verdict"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())

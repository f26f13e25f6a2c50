"""Grade files without the web or a queue: ``python -m gpu_runner grade <lab> <file>... [--json]``;
check a lab's shipped solutions: ``python -m gpu_runner check <lab folder or slug>...``.

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
from gpu_runner.text import for_terminal
from labs.catalog import LabError, find_lab, load_lab
from labs.protocol import JobMessage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu_runner")
    commands = parser.add_subparsers(dest="command", required=True)
    grade_cmd = commands.add_parser("grade", help="grade files against a lab")
    grade_cmd.add_argument("lab", help="lab slug, e.g. custom_op")
    grade_cmd.add_argument("files", nargs="+", type=Path)
    grade_cmd.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    grade_cmd.add_argument("--seed", type=int, default=None, help="case seed (default: a random secret)")
    check_cmd = commands.add_parser("check", help="grade a lab's starter and solutions and compare with expected.toml")
    check_cmd.add_argument("labs", nargs="+", help="lab folders (labs/custom_op) or slugs")
    check_cmd.add_argument("--only", action="append", help="check only this solution (repeatable)")
    check_cmd.add_argument("--json", action="store_true", help="print the checks as JSON on stdout")
    check_cmd.add_argument("--seed", type=int, default=20261121, help="case seed (default: fixed, so checks repeat)")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(parser, args)
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
    message = JobMessage(
        job_id=f"local-{int(time.time())}",
        lab_slug=lab.slug,
        lab_version=lab.version,
        files=files,
        limits=lab.limits.as_dict(),
        seed=args.seed if args.seed is not None else secrets.randbits(62),
    )
    result = grade(message, TerminalSink(quiet=False))
    if args.json:
        shown = {k: result[k] for k in ("verdict", "reason", "score", "metric", "summary", "tests")}
        print(json.dumps(shown, indent=2))
    else:
        print(for_terminal(f"{result['verdict']}: score {result['score']:g}/100. {result['summary']}"))
    return 0 if result["verdict"] == "succeeded" else 1


def _check(parser: argparse.ArgumentParser, args) -> int:
    from gpu_runner.selfcheck import self_check_lab

    labs = []
    for name in args.labs:
        try:
            labs.append(load_lab(name) if Path(name, "lab.toml").exists() else find_lab(name))
        except LabError as exc:
            parser.error(str(exc))
    reports, failed = [], 0
    for lab in labs:
        print(f"== {lab.slug} (version {lab.version}, {lab.resource_class})", file=sys.stderr, flush=True)

        def show(check):
            mark = "ok  " if check.ok else "FAIL"
            row = check.as_dict()
            cache = f", build {row['build_cache']}" if row["build_cache"] else ""
            line = (
                f"  {mark} {row['solution']:<28} {row['verdict']:<10} {row['reason'] or '-':<15} "
                f"score {row['score']:>5g}  {row['seconds']:6.1f} s{cache}"
            )
            print(line, file=sys.stderr, flush=True)
            for problem in check.problems:
                print(for_terminal(f"       - {problem}"), file=sys.stderr, flush=True)

        problems, checks = self_check_lab(lab, seed=args.seed, only=args.only, on_checked=show)
        for problem in problems:
            print(for_terminal(f"  FAIL {problem}"), file=sys.stderr)
        failed += len(problems) + sum(not c.ok for c in checks)
        reports.append({"lab": lab.slug, "problems": problems, "solutions": [c.as_dict() for c in checks]})
    if args.json:
        print(json.dumps(reports, indent=2))
    print(f"{'all checks passed' if not failed else f'{failed} problems'}", file=sys.stderr)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())

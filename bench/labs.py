"""Grading time of each lab's correct solution, through the real runner and sandbox.

The budget (../shared/LABS.md): correctness grading of one submission takes at most 60 s on two
CPU cores, compilation included. Each lab's correct solution is graded ``--runs`` times and the
median is printed with the number of tests and the verdict. A lab whose submission builds a C++
extension is graded once more first, by a fresh owner, so its first line is a cold build (``cold``)
and the median is over cached builds (``cached``). The CPU share of the machine matters: run it on
an otherwise idle machine (``taskset -c 0,1`` to pin two cores on a bigger one).

Usage: .venv/bin/python bench/labs.py [--runs 3] [--only custom_op ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import uuid
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))

from gpu_runner.selfcheck import self_check_solution  # noqa: E402
from labs.catalog import discover_labs, find_lab  # noqa: E402

BUDGET_SECONDS = 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", action="append", help="this lab only (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    labs = [find_lab(slug) for slug in args.only] if args.only else discover_labs()
    print(f"{os.cpu_count()} CPUs visible; budget {BUDGET_SECONDS:g} s per submission on 2 cores\n")
    header = f"{'lab':<24} {'class':<6} {'tests':>5} {'median s':>9} {'min s':>7} {'max s':>7}  {'cold build s':>12}"
    print(header + "  verdict")
    rows = []
    for lab in labs:
        correct = next(s for s in lab.solutions() if s.kind == "correct")
        owner = f"bench-{uuid.uuid4().hex[:8]}"  # a fresh owner: its first build is cold
        first = self_check_solution(lab, correct, seed=1, owner=owner)
        cold = first.seconds if first.result.get("timings", {}).get("build_cache") == "miss" else None
        times = [] if cold is not None else [first.seconds]
        results = [first.result]
        while len(times) < args.runs:
            check = self_check_solution(lab, correct, seed=len(times) + 2, owner=owner)
            times.append(check.seconds)
            results.append(check.result)
        verdicts = sorted({r["verdict"] for r in results})
        row = {
            "lab": lab.slug,
            "resource_class": lab.resource_class,
            "tests": len(first.result.get("tests", [])),
            "median_seconds": round(statistics.median(times), 2),
            "min_seconds": round(min(times), 2),
            "max_seconds": round(max(times), 2),
            "cold_build_seconds": round(cold, 2) if cold is not None else None,
            "verdicts": verdicts,
            "within_budget": max(times + [cold or 0.0]) <= BUDGET_SECONDS,
        }
        rows.append(row)
        cold_text = f"{cold:12.1f}" if cold is not None else f"{'-':>12}"
        print(
            f"{lab.slug:<24} {lab.resource_class:<6} {row['tests']:>5} {row['median_seconds']:>9.1f} "
            f"{row['min_seconds']:>7.1f} {row['max_seconds']:>7.1f}  {cold_text}  {'/'.join(verdicts)}"
            f"{'' if row['within_budget'] else '  OVER BUDGET'}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

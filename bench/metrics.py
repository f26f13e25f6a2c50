"""What honest students get, before and after a change to grading: each lab's correct solution
graded by an earlier version of the runner and by this one, interleaved, same seeds.

    python bench/metrics.py --before 5ea22c6 [--runs 3] [--labs custom_op autodiff ...]

The earlier version is checked out into a worktree (git must be able to reach the ref); both
trees grade with this checkout's virtual environment, through ``python -m gpu_runner grade``
(the runner, its sandbox and the timing phase, as a worker does). Prints, per lab, the median
metric of each version, their ratio, and the median grading time, so a redesign of how a figure
is measured shows whether it moved what honest work is worth. Runs alternate between the two
trees (A B, B A, ...) so the machine's load hits both alike. A lab whose metric definition
changed (the note column) is shown for the record, not compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labs.catalog import discover_labs  # noqa: E402

# Labs whose ranked figure changed meaning with the trusted-grading redesign (issue 11).
REDEFINED = {"autodiff": "now build + backward of the chain (was backward alone)"}


def worktree(ref: str) -> Path:
    where = Path("/tmp") / f"aisys-bench-{ref.replace('/', '_')}"
    if not where.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref], check=True)
    return where


def grade(tree: Path, slug: str, seed: int) -> tuple[float | None, float, str]:
    # The solution's files by path: an earlier tree's labs need not load with this checkout's loader.
    files = sorted(str(path) for path in (tree / "labs" / slug / "solutions" / "correct").glob("*.py"))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "gpu_runner", "grade", slug, *files, "--json", "--seed", str(seed)],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    try:
        result = json.loads(done.stdout)
    except ValueError:
        return None, seconds, f"no result (exit {done.returncode}): {done.stderr.strip()[-200:]}"
    return result.get("metric"), seconds, result.get("verdict", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the git ref of the earlier runner")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--labs", nargs="*", help="lab slugs (default: every CPU lab with a metric)")
    args = parser.parse_args()
    before = worktree(args.before)
    slugs = args.labs or [lab.slug for lab in discover_labs(ROOT / "labs") if lab.metric and not lab.is_gpu]
    print(f"before: {args.before} ({before}); after: this checkout; {args.runs} runs each, interleaved")
    print(f"{'lab':<24} {'before':>10} {'after':>10} {'after/before':>13} {'s before':>9} {'s after':>8}  note")
    for slug in slugs:
        figures = {"before": [], "after": []}
        seconds = {"before": [], "after": []}
        for run in range(args.runs):
            order = [("before", before), ("after", ROOT)] if run % 2 == 0 else [("after", ROOT), ("before", before)]
            for label, tree in order:
                metric, took, verdict = grade(tree, slug, seed=1000 + run)
                seconds[label].append(took)
                if metric is None:
                    print(f"  {slug} {label} run {run + 1}: {verdict}", file=sys.stderr)
                else:
                    figures[label].append(metric)
        b = statistics.median(figures["before"]) if figures["before"] else float("nan")
        a = statistics.median(figures["after"]) if figures["after"] else float("nan")
        print(
            f"{slug:<24} {b:>10.4g} {a:>10.4g} {a / b:>13.3f} {statistics.median(seconds['before']):>9.1f} "
            f"{statistics.median(seconds['after']):>8.1f}  {REDEFINED.get(slug, '')}"
        )


if __name__ == "__main__":
    main()

"""What the sandbox adds to every job: start-to-exit of a trivial program and of ``import torch``,
bare and sandboxed, interleaved so that both see the same machine state.

"bare" is a plain child process of this Python, as a job was started before the sandbox.
"sandboxed" is everything a worker does per job beyond that: create the job folder (a tmpfs
mount when root), the job's cgroups, start bubblewrap as the sandbox uid with the job's
namespaces and mounts, wait for the exit, kill and remove the cgroups, unmount and delete the
folder. The sandbox configuration probe, done once per worker process, is not counted.

Usage: .venv/bin/python bench/sandbox_overhead.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))

from gpu_runner import sandbox  # noqa: E402
from labs.catalog import Limits  # noqa: E402

PROGRAMS = {
    "trivial (python -c pass)": "pass",
    "import torch": "import torch",
}
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}


def bare(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-I", "-c", code], env=ENV, check=True)
    return time.perf_counter() - started


def sandboxed(cfg: sandbox.Config, code: str) -> float:
    limits = Limits().as_dict()
    started = time.perf_counter()
    folder = sandbox.create_job_folder("bench", config=cfg, disk_mb=limits["disk_mb"])
    box = sandbox.Sandbox(cfg, folder, limits)
    try:
        subprocess.run(
            box.argv([cfg.python_inside, "-I", "-c", code])[0],
            env=ENV,
            cwd=folder.root,
            preexec_fn=box.preexec,
            check=True,
        )
    finally:
        box.release()
        folder.remove()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    cfg = sandbox.config()
    print(f"sandbox: {cfg.describe()}")
    print(f"{args.runs} runs each, interleaved; medians in ms\n")
    print(f"{'program':<26} {'bare':>8} {'sandboxed':>10} {'added':>8} {'ratio':>7}")
    for label, code in PROGRAMS.items():
        bare(code), sandboxed(cfg, code)  # warm the page cache for both
        plain, boxed = [], []
        for _ in range(args.runs):
            plain.append(bare(code))
            boxed.append(sandboxed(cfg, code))
        p, b = statistics.median(plain) * 1000, statistics.median(boxed) * 1000
        print(f"{label:<26} {p:>8.1f} {b:>10.1f} {b - p:>8.1f} {b / p:>6.2f}x")


if __name__ == "__main__":
    main()

"""The sandbox side of ``vector_add``: the student's ``add`` on one test's inputs, or the benchmark.

Copied into the sandbox as a file and imported before the student's module (lab contract v2).
During each correctness call tensor addition is refused (``torch.add`` itself is patched for the
whole job through lab.toml) and Triton launches are counted; grader.py checks what comes back.
The benchmark is timed by ``kernels.bench`` here and checked in the worker by ``kernels.guards``.
"""

from __future__ import annotations

import torch

from kernels import bench
from labs import sandboxed

# The Tensor spellings of addition, refused while the student's add() runs.
ADDS = ("__add__", "__radd__", "__iadd__", "add", "add_")


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run(module, inputs: dict, harness):
    """One case: ``{"out", "launches", "device"}`` for a correctness test, bench's report for the benchmark."""
    if inputs["kind"] == "benchmark":
        return bench.run_case(module.add, inputs, marks=harness)
    device = _device()
    x, y = inputs["x"].to(device), inputs["y"].to(device)
    # A kernel that skips elements leaves whatever memory held: make that NaN, not a lucky answer.
    sandboxed.poison(x.numel() * 2, x.dtype, device)
    with sandboxed.count_launches() as launches, sandboxed.refused(torch.Tensor, ADDS, harness):
        out = module.add(x, y)
    return {"out": sandboxed.plain(out, "add()"), "launches": launches.count, "device": str(out.device)}

"""The sandbox side of ``triton_softmax``: the student's ``softmax``, ``softmax_backward`` or
``TritonSoftmax`` on one test's inputs, or the benchmark.

Copied into the sandbox as a file and imported before the student's module (lab contract v2).
lab.toml patches the module-level softmax functions for the whole job; the Tensor methods (which
``F.softmax`` itself calls) are refused here for the whole call, and Triton launches are
counted. References and checks stay in grader.py, in the worker.
"""

from __future__ import annotations

import torch

from kernels import bench
from labs import sandboxed

# The Tensor methods of the library softmax, refused during every call.
METHODS = ("softmax", "log_softmax")


def run(module, inputs: dict, harness):
    """One case: the output and the launch counts for a test, bench's report for the benchmark."""
    with sandboxed.refused(torch.Tensor, METHODS, harness):
        if inputs["kind"] == "benchmark":
            return bench.run_case(module.softmax, inputs, marks=harness)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with sandboxed.count_launches() as launches:
            # A kernel that skips elements leaves whatever memory held: make that NaN, not a lucky answer.
            first = inputs["x"] if "x" in inputs else inputs["y"]
            sandboxed.poison(first.numel() * 2, first.dtype, device)
            return _call(module, inputs, device, launches)


def _call(module, inputs: dict, device: str, launches: sandboxed.Launches) -> dict:
    kind = inputs["kind"]
    if kind == "forward":
        return _forward(module, inputs, device, launches)
    if kind == "backward":
        y, dy = inputs["y"].to(device), inputs["dy"].to(device)
        out = sandboxed.plain(module.softmax_backward(y, dy), "softmax_backward()")
        return {"out": out, "launches": launches.count}
    if kind == "autograd":
        return _autograd(module, inputs, device, launches)
    raise ValueError(f"unknown case kind {kind!r}")


def _forward(module, inputs: dict, device: str, launches: sandboxed.Launches) -> dict:
    x = inputs["x"].to(device)
    if inputs.get("cols"):
        x = x[..., : inputs["cols"]]  # a column slice: row stride > n_cols
    out = sandboxed.plain(module.softmax(x), "softmax()")
    return {"out": out, "launches": launches.count}


def _autograd(module, inputs: dict, device: str, launches: sandboxed.Launches) -> dict:
    x = inputs["x"].to(device).requires_grad_(True)
    y = module.TritonSoftmax.apply(x)
    y_out = sandboxed.plain(y, "TritonSoftmax.apply(x)")
    forward_launches = launches.count
    y.backward(inputs["dy"].to(device))
    grad = None if x.grad is None else x.grad.detach().cpu()
    return {
        "y": y_out,
        "grad": grad,
        "forward_launches": forward_launches,
        "backward_launches": launches.count - forward_launches,
    }

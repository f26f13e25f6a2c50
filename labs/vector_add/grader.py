"""Grader for the ``vector_add`` lab: ``add(x, y)`` as a masked Triton kernel.

Correctness first, on awkward sizes (1, non-multiples of any block size, 1e6) and dtypes, with
tensor addition patched out during the call so the kernel must do the work (run.py, in the
sandbox); then a benchmark case timed by ``kernels.bench`` inside the sandbox and checked here
by ``kernels.guards``
(timed outputs, physical floor, the worker's own clock, side streams). The metric is achieved
bandwidth in GB/s (geometric mean over the benchmark sizes) on a GPU worker; in Triton's
interpreter (a worker without a GPU) the timings are shown but mean nothing and are not ranked.
"""

from __future__ import annotations

import torch

from kernels import bench, guards
from labs.trusted import CheckFailed, assert_close

SIZES = (1, 7, 1023, 1024, 1025, 4097, 100_003, 1_000_000)
# Addition is exact up to one rounding in every dtype, so the tolerances allow only that: a kernel
# that adds in a lower precision (fp32 through fp16) fails, one that adds correctly cannot.
TOLERANCES = {
    torch.float32: (1.5e-7, 0.0),
    torch.float16: (1e-3, 0.0),
    torch.bfloat16: (8e-3, 0.0),
}
# Benchmark sizes: on a GPU large enough to stream from HBM (2^24 and 2^26 floats are 192 MiB and
# 768 MiB per call, far beyond a 50 MB L2) plus one small one that runs as a CUDA graph. In the
# interpreter, small enough that a call takes milliseconds.
GPU_BENCH_SIZES = (2**20, 2**24, 2**26)
CPU_BENCH_SIZES = (2**12, 2**15)
GPU_SETTINGS = {"time_cap_seconds": 3.0, "min_samples": 10, "max_samples": 1000}
CPU_SETTINGS = {"time_cap_seconds": 1.0, "min_samples": 10, "max_samples": 20, "warmup_seconds": 0.0}


def _tensor(gen: torch.Generator, shape, dtype) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float32) * 200 - 100).to(dtype)


def cases(seed: int, device: str = "cpu") -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in SIZES:
        x, y = _tensor(gen, (n,), torch.float32), _tensor(gen, (n,), torch.float32)
        out.append({"name": f"size_{n}", "points": 10, "inputs": {"kind": "add", "x": x, "y": y}})
    x, y = _tensor(gen, (37, 91), torch.float32), _tensor(gen, (37, 91), torch.float32)
    out.append({"name": "matrix_37x91", "points": 5, "inputs": {"kind": "add", "x": x, "y": y}})
    x, y = _tensor(gen, (5000,), torch.float16), _tensor(gen, (5000,), torch.float16)
    out.append({"name": "float16", "points": 5, "inputs": {"kind": "add", "x": x, "y": y}})
    if device == "cuda":  # the interpreter's numpy has no bfloat16
        x, y = _tensor(gen, (5000,), torch.bfloat16), _tensor(gen, (5000,), torch.bfloat16)
        out.append({"name": "bfloat16", "points": 0, "inputs": {"kind": "add", "x": x, "y": y}})
    sizes, settings = (GPU_BENCH_SIZES, GPU_SETTINGS) if device == "cuda" else (CPU_BENCH_SIZES, CPU_SETTINGS)
    shapes = [
        {
            "label": f"n={n}",
            "inputs": [{"shape": [n], "dtype": "float32"}, {"shape": [n], "dtype": "float32"}],
            "bytes": 3 * 4 * n,  # read x and y, write the output
            "dtype": "float32",
        }
        for n in sizes
    ]
    out.append(guards.benchmark_case(name="benchmark", seed=seed, shapes=shapes, points=10, settings=settings))
    return out


def _expected_at(shape: dict, call: int, positions: torch.Tensor) -> torch.Tensor:
    x, y = guards.call_inputs(shape, call, flat_indices=[positions, positions])
    return (x + y).to(torch.float64)


def _check_add(case: dict, output) -> None:
    if not isinstance(output, dict) or not isinstance(output.get("out"), torch.Tensor):
        raise CheckFailed("add() must return a torch.Tensor")
    x, y = case["inputs"]["x"], case["inputs"]["y"]
    if output.get("launches", 0) < 1:
        raise CheckFailed(
            "add() returned without launching a Triton kernel: launch your @triton.jit kernel with kernel[grid](...)"
        )
    rtol, atol = TOLERANCES[x.dtype]
    expected = x + y
    assert_close(output["out"], expected, what=f"add() on {tuple(x.shape)} {x.dtype}", rtol=rtol, atol=atol)


def _check_benchmark(case: dict, output) -> dict:
    runtime = case["runtime"]
    results = guards.verify(
        case,
        output,
        spec=runtime["spec"],
        envelopes=runtime["envelopes"],
        expected_at=_expected_at,
        output_shape=lambda shape: shape["inputs"][0]["shape"],
        rtol=TOLERANCES[torch.float32][0],
        atol=0.0,
    )
    figures = guards.shape_figures(results)
    if runtime["interpreted"]:
        return {
            "message": "Timed in Triton's interpreter (this worker has no GPU): the guards ran, but the "
            "figures mean nothing and are not ranked.\n" + figures,
        }
    gbps = bench.geometric_mean([r["gb_per_s"] for r in results.values()])
    return {"metric": gbps, "message": f"{gbps:.4g} GB/s (geometric mean over sizes)\n" + figures}


def check(case: dict, output) -> dict | None:
    kind = case["inputs"]["kind"]
    if kind == "add":
        _check_add(case, output)
        return None
    if kind == "benchmark":
        return _check_benchmark(case, output)
    raise CheckFailed(f"internal grader error: unknown case kind {kind!r}")

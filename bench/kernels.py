"""Every reference kernel against torch's own implementation, timed by kernels/bench.py.

Per kernel and shape it prints the median time (and samples), the achieved GB/s or TFLOP/s, the
fraction of the device's peak (datasheet, kernels/devices.py), and the speed relative to torch
(torch's median time / ours: 1x is as fast as torch). Memory-bound kernels are also given as a
fraction of the device's *measured* copy bandwidth, the realistic ceiling. ``--spread`` repeats
one >= 20 us measurement ten times and prints the spread of its medians.

On a machine without a GPU the Triton kernels run in Triton's interpreter on small shapes: the
table is printed and labelled, but those timings say nothing about the kernels (the C++ CPU path
of the tiled matmul is compiled code and is real).

Usage: .venv/bin/python bench/kernels.py [--only softmax,matmul] [--spread] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE))

import torch  # noqa: E402

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit is defined

from kernels import bench, devices  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")


@dataclass
class Workload:
    kernel: str
    label: str
    ours: Callable
    torch_impl: Callable
    inputs: list[dict]  # tensor specs for bench.make_inputs
    bytes_moved: float = 0.0
    flops: float = 0.0
    dtype: str = "float32"
    interpreted: bool = True  # runs in Triton's interpreter without a GPU


def _spec(shape, dtype="float32", low=-1.0, high=1.0) -> dict:
    return {"shape": list(shape), "dtype": dtype, "low": low, "high": high}


def workloads() -> list[Workload]:
    from kernels import cuda_matmul, layernorm, matmul, softmax, threelc, vector_add

    out = []
    for n in (2**20, 2**24, 2**26) if CUDA else (2**12, 2**16):
        out.append(
            Workload("vector_add", f"n={n}", vector_add.add, torch.add, [_spec([n]), _spec([n])], bytes_moved=12 * n)
        )
    for rows, cols in ((32768, 1024), (8192, 781), (4096, 16384)) if CUDA else ((16, 781), (4, 4096)):
        numel = rows * cols
        out.append(
            Workload(
                "softmax_fwd",
                f"{rows}x{cols}",
                softmax.softmax,
                lambda x: torch.softmax(x, dim=-1),
                [_spec([rows, cols], low=-5, high=5)],
                bytes_moved=8 * numel,
            )
        )
        out.append(
            Workload(
                "softmax_bwd",
                f"{rows}x{cols}",
                softmax.softmax_backward,
                lambda y, dy: torch.ops.aten._softmax_backward_data(dy, y, -1, y.dtype),
                [_spec([rows, cols], low=0, high=1e-3), _spec([rows, cols])],
                bytes_moved=12 * numel,
            )
        )
    for rows, cols in ((16384, 4096), (8192, 781)) if CUDA else ((16, 781),):
        out.append(
            Workload(
                "layernorm_fwd",
                f"{rows}x{cols}",
                layernorm.layer_norm,
                lambda x, w, b: torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b),
                [_spec([rows, cols]), _spec([cols]), _spec([cols])],
                bytes_moved=8 * rows * cols + 8 * cols,
            )
        )
    for dtype in ("bfloat16", "float16"):
        for m, n, k in ((4096, 4096, 4096), (2048, 2048, 2048), (8192, 1024, 4096)) if CUDA else ((64, 64, 64),):
            out.append(
                Workload(
                    "matmul",
                    f"{m}x{n}x{k} {dtype}",
                    matmul.matmul,
                    torch.mm,
                    [_spec([m, k], dtype), _spec([k, n], dtype)],
                    bytes_moved=2 * (m * k + k * n + m * n),
                    flops=2 * m * n * k,
                    dtype=dtype,
                )
            )
    for size in (2048, 4096) if CUDA else (256,):
        out.append(
            Workload(
                "cuda_matmul" if CUDA else "cuda_matmul (C++ CPU path)",
                f"{size}^3 float32",
                cuda_matmul.matmul,
                torch.mm,
                [_spec([size, size]), _spec([size, size])],
                bytes_moved=12 * size * size,
                flops=2 * size**3,
                interpreted=False,
            )
        )
    for n in (2**24, 2**26) if CUDA else (2**14,):

        def quantize_and_pack(t):
            q, _scale = threelc.ternary_quantize(t, 1.5)
            return threelc.pack_base3(q)

        def torch_quantize_and_pack(t):
            q, _scale = threelc.ternary_quantize_reference(t, 1.5)
            return threelc.pack_base3_reference(q)

        out.append(
            Workload(
                "3lc_quantize_pack",
                f"n={n}",
                quantize_and_pack,
                torch_quantize_and_pack,
                [_spec([n])],
                bytes_moved=4 * n + n // 5,  # read the floats once, write a byte per 5 values
            )
        )
    return out


def _settings() -> bench.Settings:
    if CUDA:
        return bench.Settings(time_cap_seconds=3.0)
    return bench.Settings(min_samples=10, max_samples=10, time_cap_seconds=5.0, warmup_seconds=0.0)


def measure(workload: Workload, seed: int) -> dict:
    def inputs_for(call: int):
        return bench.make_inputs(workload.inputs, bench.call_seed(seed, call), DEVICE)

    settings = _settings()
    ours = bench.time_function(workload.ours, inputs_for, label=workload.label, device=DEVICE, settings=settings)
    theirs = bench.time_function(workload.torch_impl, inputs_for, label="torch", device=DEVICE, settings=settings)
    return {"ours": ours.summary(), "mode": ours.mode, "torch": theirs.summary()}


def spread(workload: Workload, repeats: int = 10) -> dict:
    """Ten independent measurements of one workload: how far apart their medians land."""
    medians = [measure(workload, seed=1000 + r)["ours"]["median"] for r in range(repeats)]
    middle = statistics.median(medians)
    return {"medians": medians, "spread": (max(medians) - min(medians)) / middle}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated kernel names (vector_add, softmax_fwd, ...)")
    parser.add_argument("--spread", action="store_true", help="also measure the run-to-run spread (10 repeats)")
    parser.add_argument("--json", default="", help="write the figures to this file too")
    args = parser.parse_args()

    spec = devices.current(DEVICE)
    copy = spec if spec.measured else devices.probe(DEVICE)
    env = bench.environment(DEVICE)
    print(f"device: {spec.name} ({'measured' if spec.measured else 'datasheet'}: {spec.source})")
    print(
        f"peak memory bandwidth {spec.memory_bandwidth / 1e9:.0f} GB/s; "
        f"measured copy {copy.memory_bandwidth / 1e9:.0f} GB/s"
    )
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    if not CUDA:
        print("NO GPU: Triton kernels run in Triton's interpreter on small shapes; their timings mean NOTHING.")
    print()
    header = (
        f"{'kernel':<28} {'shape':<22} {'median':>11} {'n':>4} {'rate':>14} "
        f"{'of peak':>8} {'of copy':>8} {'vs torch':>9}"
    )
    print(header)
    print("-" * len(header))
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    rows = []
    for index, workload in enumerate(workloads()):
        if only and not any(workload.kernel.startswith(name) for name in only):
            continue
        result = measure(workload, seed=index)
        median = result["ours"]["median"]
        figures = devices.roofline(
            spec, seconds=median, bytes_moved=workload.bytes_moved, flops=workload.flops, dtype=workload.dtype
        )
        of_copy = None
        if workload.flops:
            rate, fraction = f"{figures['tflop_per_s']:.3g} TFLOP/s", figures.get("compute_fraction")
        else:
            rate, fraction = f"{figures['gb_per_s']:.4g} GB/s", figures["bandwidth_fraction"]
            of_copy = figures["gb_per_s"] * 1e9 / copy.memory_bandwidth
        vs_torch = result["torch"]["median"] / median
        interpreted = not CUDA and workload.interpreted
        mark = " (interp.)" if interpreted else ""
        print(
            f"{workload.kernel:<28} {workload.label:<22} {median * 1e6:>9.4g}us {result['ours']['samples']:>4} "
            f"{rate:>14} {_pct(fraction):>8} {_pct(of_copy):>8} {vs_torch:>8.3g}x{mark}"
        )
        rows.append(
            {
                "kernel": workload.kernel,
                "shape": workload.label,
                "interpreted": interpreted,
                "mode": result["mode"],
                "ours": result["ours"],
                "torch": result["torch"],
                "vs_torch": vs_torch,
                "of_copy_bandwidth": of_copy,
                **figures,
            }
        )
    report = {"device": spec.name, "environment": env, "copy_bandwidth": copy.memory_bandwidth, "rows": rows}
    if args.spread:
        target = next(w for w in workloads() if w.kernel == "vector_add" and (not CUDA or w.bytes_moved >= 12 * 2**24))
        result = spread(target)
        report["spread"] = {"kernel": target.kernel, "shape": target.label, **result}
        print(
            f"\nrun-to-run spread of {target.kernel} {target.label} over 10 measurements: "
            f"{result['spread']:.2%} (medians {min(result['medians']) * 1e6:.4g}.."
            f"{max(result['medians']) * 1e6:.4g} us)" + (" (interpreter)" if not CUDA else "")
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    sys.exit(main())

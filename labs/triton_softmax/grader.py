"""Grader for the ``triton_softmax`` lab: row softmax, its backward and an autograd Function in Triton.

Correctness first: the forward on 781 and 1000 columns (neither a power of two, so the padding
lanes of a block matter) and 1 to 1024 rows, 3-D and column-sliced inputs, inputs shifted by
+1000 (overflow without the max subtraction) and rows holding -inf; the backward against the
closed form and ``TritonSoftmax`` against torch autograd. References are computed here in
float64, never in the sandbox. During every call the library softmax is patched to raise (the
module spellings through lab.toml, the Tensor methods in run.py) and run.py counts Triton
kernel launches, so the kernels must do the work. Then a benchmark case timed by
``kernels.bench`` in the sandbox and checked here by ``kernels.guards``; the metric is achieved
bandwidth (read x, write y) in GB/s on a GPU worker. In Triton's interpreter (no GPU) the
figures are shown but mean nothing and are not ranked.
"""

from __future__ import annotations

import torch

from kernels import bench, guards
from labs.trusted import CheckFailed, assert_close

# The contract's tolerances (absolute: softmax outputs lie in [0, 1]).
ATOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
# Logits are N(0, s^2) with a scale s per row, uniform in [0.5, 4]. Small-scale rows have a small
# max, so padding lanes that wrongly load 0 add exp(0 - max) to the sum and err by up to ~20%;
# large-scale rows have probabilities up to ~0.5, where float16 arithmetic or a float16 output
# errs by ~2e-4, far past the fp32 bound, while an fp32 kernel errs by ~1e-7.
SCALE_LOW, SCALE_HIGH = 0.5, 4.0

# (rows, columns, points). Interpreter cost is per row (one program each): one case reaches 1024.
FORWARD_SHAPES = ((1, 781, 5), (37, 1000, 5), (300, 781, 10), (1024, 1000, 10))
# Benchmark shapes: on a GPU, 4096 rows of 781 (25 MB a call: read x, write y; small enough to be
# timed as a CUDA graph), 4096 (134 MB) and 16384 columns (537 MB, far beyond a 50 MB L2). In
# the interpreter (1.3 to 3 ms per row, more for wide rows) small enough that a call takes ~10-20 ms.
GPU_BENCH_SHAPES = ((4096, 781), (4096, 4096), (4096, 16384))
CPU_BENCH_SHAPES = ((8, 781), (4, 4096))
GPU_SETTINGS = {"time_cap_seconds": 3.0, "min_samples": 10, "max_samples": 1000}
CPU_SETTINGS = {"time_cap_seconds": 1.0, "min_samples": 10, "max_samples": 12, "warmup_seconds": 0.0}
BENCH_LOW, BENCH_HIGH = -8.0, 8.0

FORWARD_HINT = (
    "Common causes: 781 and 1000 are not powers of two, so the lanes of your block past n_cols must load "
    "-inf (tl.load(..., mask=..., other=float('-inf'))), adding nothing to the row max or the sum of "
    "exponentials, and must not be stored; and float32 inputs need float32 all the way (arithmetic and "
    "output buffer): float16 keeps only about 3 significant digits."
)
SHIFT_HINT = (
    "Every input here is shifted by +1000: exp(1000) overflows float32 to inf and inf / inf is NaN. "
    "Subtract the row maximum before exp: softmax(x) == softmax(x - max(x))."
)
NEG_INF_HINT = (
    "Rows here hold -inf entries (masked logits), and each row has at least one finite entry: "
    "a -inf entry has probability exactly 0 and the rest still sum to 1. NaN usually comes from "
    "exp(-inf - (-inf)): e.g. a chunk of a row that is entirely -inf when you stream a row in "
    "chunks with a running max; guard the rescaling when the running max is still -inf."
)
HALF_HINT = "Load half-precision inputs, compute in float32 (.to(tl.float32)) and store in the input's dtype."
BACKWARD_HINT = (
    "Per row, dx = y * (dy - sum_j(y_j * dy_j)): check the row-sum term, and that padding lanes load 0 "
    "for both y and dy so they add nothing to it."
)
AUTOGRAD_HINT = (
    "TritonSoftmax.forward(ctx, x) should compute y = softmax(x) and ctx.save_for_backward(y); "
    "TritonSoftmax.backward(ctx, dy) should return softmax_backward(y, dy)."
)


def _logits(gen: torch.Generator, shape, dtype=torch.float32) -> torch.Tensor:
    scale = SCALE_LOW + (SCALE_HIGH - SCALE_LOW) * torch.rand((*shape[:-1], 1), generator=gen)
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


def _with_neg_inf(gen: torch.Generator, rows: int, cols: int) -> torch.Tensor:
    """Rows with -inf entries (``rows`` >= 6), each row keeping at least one finite entry (an all
    -inf row has no defined softmax and is not tested)."""
    x = _logits(gen, (rows, cols))
    neg_inf = float("-inf")
    keep = int(torch.randint(cols, (1,), generator=gen))
    x[0, :keep] = neg_inf  # one finite entry: the answer is one-hot
    x[0, keep + 1 :] = neg_inf
    x[1, : cols * 3 // 5] = neg_inf  # a long -inf prefix: the first chunks of a streamed row are all -inf
    x[2, cols * 2 // 5 :] = neg_inf  # a long -inf suffix
    x[3, keep] = neg_inf  # a single -inf
    x[4, :-1] = neg_inf  # only the last entry is finite
    masked = torch.rand((rows - 5, cols), generator=gen) < 0.3
    masked[torch.arange(rows - 5), torch.randint(cols, (rows - 5,), generator=gen)] = False
    x[5:][masked] = neg_inf
    return x


def _softmax64(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x.to(torch.float64), dim=-1)


def cases(seed: int, device: str = "cpu") -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []

    def forward(name: str, x: torch.Tensor, points: float, hint: str, cols: int | None = None) -> None:
        out.append(
            {
                "name": name,
                "points": points,
                "inputs": {"kind": "forward", "x": x, "cols": cols},
                "hint": hint,
            }
        )

    # Every forward case has its own (shape, dtype): a softmax that caches its answers by shape
    # passes them all, and only the benchmark's audit of fresh inputs can catch it (the shipped
    # caches_output solution proves it does).
    for rows, cols, points in FORWARD_SHAPES:
        forward(f"forward_{rows}x{cols}", _logits(gen, (rows, cols)), points, FORWARD_HINT)
    forward(
        "forward_3d_4x9x1000",
        _logits(gen, (4, 9, 1000)),
        5,
        "The softmax is over the last dimension; "
        "any leading dimensions are rows (x.reshape(-1, n_cols)). " + FORWARD_HINT,
    )
    # A column slice of a wider buffer (row stride 1000, 781 columns), made in run() since a
    # clone would make it contiguous.
    forward(
        "forward_strided_64x781",
        _logits(gen, (64, 1000)),
        5,
        "The input is x[:, :781] of a 64x1000 buffer: not contiguous (row stride 1000). Call "
        ".contiguous() first or pass x.stride(0) to the kernel. " + FORWARD_HINT,
        cols=781,
    )
    forward("shifted_by_1000", _logits(gen, (96, 1000)) + 1000.0, 10, SHIFT_HINT)
    forward("neg_inf_64x1000", _with_neg_inf(gen, 64, 1000), 5, NEG_INF_HINT)
    # Wide rows (not a power of two either): a kernel that streams wide rows in chunks meets
    # chunks that are entirely -inf here.
    forward("neg_inf_wide_6x20000", _with_neg_inf(gen, 6, 20000), 5, NEG_INF_HINT)
    forward("float16", _logits(gen, (64, 1000), torch.float16), 5, HALF_HINT)
    if device == "cuda":  # the interpreter mishandles bfloat16 (its numpy has none): GPU only, no points
        forward("bfloat16", _logits(gen, (64, 781), torch.bfloat16), 0, HALF_HINT)

    for rows, cols in ((37, 781), (128, 1000)):
        y = _softmax64(_logits(gen, (rows, cols))).to(torch.float32)
        dy = torch.randn((rows, cols), generator=gen)
        out.append(
            {
                "name": f"backward_{rows}x{cols}",
                "points": 5 if rows < 100 else 10,
                "inputs": {"kind": "backward", "y": y, "dy": dy},
                "hint": BACKWARD_HINT,
            }
        )
    x, dy = _logits(gen, (4, 8, 781)), torch.randn((4, 8, 781), generator=gen)
    out.append(
        {
            "name": "autograd_4x8x781",
            "points": 10,
            "inputs": {"kind": "autograd", "x": x, "dy": dy},
            "hint": AUTOGRAD_HINT,
        }
    )

    shapes, settings = (GPU_BENCH_SHAPES, GPU_SETTINGS) if device == "cuda" else (CPU_BENCH_SHAPES, CPU_SETTINGS)
    specs = [
        {
            "label": f"{rows}x{cols}",
            "inputs": [{"shape": [rows, cols], "dtype": "float32", "low": BENCH_LOW, "high": BENCH_HIGH}],
            "bytes": 2 * 4 * rows * cols,  # read x, write y
            "dtype": "float32",
        }
        for rows, cols in shapes
    ]
    out.append(guards.benchmark_case(name="benchmark", seed=seed, shapes=specs, points=10, settings=settings))
    return out


def _no_kernel(what: str) -> CheckFailed:
    return CheckFailed(
        f"{what} returned without launching a Triton kernel: launch your @triton.jit kernel with "
        "kernel[grid](...); computing the result with torch operations does not count"
    )


def _compare(actual, expected: torch.Tensor, *, what: str, hint: str) -> None:
    try:
        assert_close(actual, expected, what=what, rtol=0.0, atol=ATOL[expected.dtype])
    except CheckFailed as exc:
        raise CheckFailed(f"{exc}. {hint}") from None


def _forward_input(case: dict) -> torch.Tensor:
    x = case["inputs"]["x"]
    cols = case["inputs"].get("cols")
    return x[..., :cols] if cols else x


def _check_forward(case: dict, output) -> None:
    x = _forward_input(case)
    what = f"softmax() on {tuple(x.shape)} {x.dtype}"
    if output["launches"] < 1:
        raise _no_kernel("softmax()")
    _compare(output["out"], _softmax64(x).to(x.dtype), what=what, hint=case["hint"])


def _check_backward(case: dict, output) -> None:
    y, dy = case["inputs"]["y"], case["inputs"]["dy"]
    if output["launches"] < 1:
        raise _no_kernel("softmax_backward()")
    y64, dy64 = y.to(torch.float64), dy.to(torch.float64)
    expected = y64 * (dy64 - (y64 * dy64).sum(dim=-1, keepdim=True))
    what = f"softmax_backward(y, dy) on {tuple(y.shape)} {y.dtype}"
    _compare(output["out"], expected.to(y.dtype), what=what, hint=case["hint"])


def _check_autograd(case: dict, output) -> None:
    x, dy = case["inputs"]["x"], case["inputs"]["dy"]
    shape = tuple(x.shape)
    if output["forward_launches"] < 1:
        raise _no_kernel("TritonSoftmax.apply(x) (the forward)")
    x64 = x.to(torch.float64).requires_grad_(True)
    y64 = torch.softmax(x64, dim=-1)
    y64.backward(dy.to(torch.float64))
    _compare(output["y"], y64.detach().to(x.dtype), what=f"TritonSoftmax forward on {shape}", hint=case["hint"])
    if output["grad"] is None:
        raise CheckFailed(
            f"TritonSoftmax on {shape}: y.backward(dy) left x.grad empty: backward must return the gradient "
            f"of x. {case['hint']}"
        )
    if output["backward_launches"] < 1:
        raise _no_kernel("TritonSoftmax.backward (through y.backward(dy))")
    _compare(output["grad"], x64.grad.to(x.dtype), what=f"x.grad from TritonSoftmax on {shape}", hint=case["hint"])


def _expected_at(shape: dict, call: int, positions: torch.Tensor) -> torch.Tensor:
    """Softmax of one timed call at flat ``positions``: rebuild only the rows they fall in."""
    rows, cols = shape["inputs"][0]["shape"]
    needed, which = torch.unique(positions // cols, return_inverse=True)
    flat = (needed[:, None] * cols + torch.arange(cols)).reshape(-1)
    (x,) = guards.call_inputs(shape, call, flat_indices=[flat])
    y = _softmax64(x.reshape(len(needed), cols))
    return y[which, positions % cols]


def _check_benchmark(case: dict, output) -> dict:
    runtime = case["runtime"]
    results = guards.verify(
        case,
        output,
        spec=runtime["spec"],
        envelopes=runtime["envelopes"],
        expected_at=_expected_at,
        output_shape=lambda shape: shape["inputs"][0]["shape"],
        rtol=0.0,
        atol=ATOL[torch.float32],
    )
    figures = guards.shape_figures(results)
    if runtime["interpreted"]:
        return {
            "message": "Timed in Triton's interpreter (this worker has no GPU): the guards ran, but the "
            "figures mean nothing and are not ranked.\n" + figures,
        }
    gbps = bench.geometric_mean([r["gb_per_s"] for r in results.values()])
    headline = f"{gbps:.4g} GB/s (geometric mean over shapes)"
    fractions = [r.get("bandwidth_fraction") for r in results.values()]
    if all(fractions):  # None when the device's peak bandwidth is unknown
        fraction = bench.geometric_mean(fractions)
        headline = f"{gbps:.4g} GB/s, {100 * fraction:.1f}% of peak (geometric means over shapes)"
    return {"metric": gbps, "message": headline + "\n" + figures}


def check(case: dict, output) -> dict | None:
    kind = case["inputs"]["kind"]
    if kind == "benchmark":
        return _check_benchmark(case, output)
    if not isinstance(output, dict):
        raise CheckFailed(f"internal grader error: run() returned {type(output).__name__}")
    if kind == "forward":
        _check_forward(case, output)
    elif kind == "backward":
        _check_backward(case, output)
    elif kind == "autograd":
        _check_autograd(case, output)
    else:
        raise CheckFailed(f"internal grader error: unknown case kind {kind!r}")
    return None

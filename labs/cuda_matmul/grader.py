"""Grader for the ``cuda_matmul`` lab: a matmul C++/CUDA extension and a Linear Function on it.

Trust split (docs/authoring-labs.md, lab contract v2): ``cases`` and ``check`` run in the worker
and hold the float64 references; run.py, next to this file, runs in the sandbox.

What makes the extension do the work:

- torch's matmul entry points are patched to raise for the whole job (``forbidden`` in lab.toml)
  and run.py refuses the Tensor methods (``a @ b``, ``a.mm(b)``, ...) during every call;
- inside ``matmul`` a ``TorchDispatchMode`` sees every ATen op, whether called from Python or
  from the extension's C++: only allocation, copies and views may run there, so a product
  computed by torch in any disguise (broadcast multiply and sum, ``at::mm`` from C++) fails as a
  forbidden call, while the extension's own loops and kernels are invisible to it;
- ``MatmulLinearFunction`` must call ``matmul`` for its forward and both gradient products:
  run.py counts the calls by replacing the module's ``matmul`` for the duration of a case.

The metric (GPU) is the student's TFLOP/s at 2048^3 in float32 divided by cuBLAS's (torch.mm
with TF32 off), both timed by ``kernels.bench`` in the same job and both checked by
``kernels.guards``. Without a GPU the C++ path is graded for correctness and a small CPU
benchmark against ``torch.mm`` is shown, not ranked.

cuBLAS timed in the student's process is this lab's remaining gap in invariant 1
(docs/security.md): see ``_time_cublas_in_the_students_process`` in run.py.
"""

from __future__ import annotations

import math

import torch

from kernels import guards
from labs.trusted import CheckFailed, assert_close, field

# Each element must be within RTOL * |expected| + ATOL_FACTOR * RMS(expected output). The RMS term
# stands in for an absolute tolerance at the scale of the output, for entries that cancel to
# near zero. A float32 loop with float32 accumulation in any order is ~1e-5 of the RMS at
# K = 2048 (measured: 7e-6); inputs rounded to fp16/TF32 are ~1e-3 and fail about half the
# elements, bfloat16 more than 90%.
RTOL = 1e-4
ATOL_FACTOR = 1e-4

# (M, K, N): a is M x K, b is K x N. No size is a multiple of a 16, 32 or 64 tile except 128^3.
RAGGED_SHAPES = ((33, 65, 97), (257, 129, 65), (200, 1, 130), (1, 300, 1))
NON_CONTIGUOUS_SHAPE = (45, 67, 39)
GPU_BENCH_SIZE = 2048
CPU_BENCH_SIZE = 256  # the C++ path on one thread: tens of ms per call, torch.mm about 1 ms
GPU_SETTINGS = {"time_cap_seconds": 3.0, "min_samples": 10, "max_samples": 1000}
CPU_SETTINGS = {"time_cap_seconds": 1.0, "min_samples": 5, "max_samples": 20, "warmup_seconds": 0.0}
# cuBLAS SGEMM at 2048^3 runs at a large fraction of the fp32 peak; a reference far below it was
# slowed down (a busy GPU, or a submission interfering with the reference's timing), which would
# inflate the ratio. Loose on purpose: a plausibility bound, not a measurement (no GPU was at hand
# when this was chosen; re-measure with bench/kernels.py).
MIN_CUBLAS_PEAK_FRACTION = 0.10
YOURS, CUBLAS = "yours", "torch.mm"


# --------------------------------------------------------------------------------------------
# cases: trusted, from the job's secret seed
# --------------------------------------------------------------------------------------------


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float32)


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.double() @ b.double()


def _matmul_case(name: str, points: float, device: str, gen: torch.Generator, shapes) -> dict:
    pairs = [(_randn(gen, m, k), _randn(gen, k, n)) for m, k, n in shapes]
    return {
        "name": name,
        "points": points,
        "inputs": {"kind": "matmul", "device": device, "pairs": pairs},
        "expected": [_product(a, b) for a, b in pairs],
    }


def _linear_case(name: str, points: float, device: str, gen: torch.Generator, x_shape, out_features, bias) -> dict:
    in_features = x_shape[-1]
    x, w = _randn(gen, *x_shape), _randn(gen, out_features, in_features)
    b = _randn(gen, out_features) if bias else None
    g = _randn(gen, *x_shape[:-1], out_features)
    x2, g2 = x.double().reshape(-1, in_features), g.double().reshape(-1, out_features)
    out = x2 @ w.double().t() + (b.double() if bias else 0.0)
    expected = {
        "out": out.reshape(*x_shape[:-1], out_features),
        "grad_x": (g2 @ w.double()).reshape(x_shape),
        "grad_weight": g2.t() @ x2,
    }
    if bias:
        expected["grad_bias"] = g2.sum(0)
    return {
        "name": name,
        "points": points,
        "inputs": {"kind": "linear", "device": device, "x": x, "weight": w, "bias": b, "grad_output": g},
        "expected": expected,
    }


def _benchmark_shape(label: str, size: int, device: str) -> dict:
    shape = {
        "label": label,
        "inputs": [{"shape": [size, size], "dtype": "float32"}, {"shape": [size, size], "dtype": "float32"}],
        "dtype": "float32",
    }
    if device == "cuda":
        # The physical floor and the roofline figures come from the GPU's datasheet. On a CPU the
        # peaks are a quick probe on a shared machine, and a 256^3 problem lives in cache, so a
        # floor from them is noise (it rejected torch.mm itself): none there.
        shape["flops"] = 2 * size**3
        shape["bytes"] = 3 * 4 * size**2  # read a and b, write c, once each: the compulsory traffic
    return shape


def cases(seed: int, device: str = "cpu") -> list[dict]:
    """Every hidden test; inputs from the secret seed. On a GPU worker the kernels get CUDA tensors."""
    gen = torch.Generator().manual_seed(seed)
    out = [
        _matmul_case("matmul_1x2x3", 10, device, gen, [(1, 2, 3)]),
        _matmul_case("matmul_72x73x74", 10, device, gen, [(72, 73, 74)]),
        _matmul_case("matmul_128x128x128", 10, device, gen, [(128, 128, 128)]),
        _matmul_case("matmul_ragged_shapes", 15, device, gen, RAGGED_SHAPES),
    ]
    m, k, n = NON_CONTIGUOUS_SHAPE
    a, b = _randn(gen, m, k), _randn(gen, k, n)
    out.append(
        {
            "name": "matmul_non_contiguous",
            "points": 10,
            # Stored contiguous and transposed in run.py, so serialisation cannot undo the views.
            "inputs": {
                "kind": "matmul_transposed",
                "device": device,
                "a_t": a.t().contiguous(),
                "b_t": b.t().contiguous(),
            },
            "expected": [_product(a, b)],
        }
    )
    # On a GPU worker the module must still send CPU tensors to the C++ path. The case is there on
    # a CPU worker too, so that the points, and so the scores, are the same on both.
    out.append(_matmul_case("matmul_cpu_tensors", 5, "cpu", gen, [(17, 33, 9)]))
    out.append(_linear_case("linear_3d_input_with_bias", 15, device, gen, (3, 5, 73), 74, bias=True))
    out.append(_linear_case("linear_square_weight_no_bias", 15, device, gen, (37, 64), 64, bias=False))
    size, settings = (GPU_BENCH_SIZE, GPU_SETTINGS) if device == "cuda" else (CPU_BENCH_SIZE, CPU_SETTINGS)
    shapes = [_benchmark_shape(YOURS, size, device), _benchmark_shape(CUBLAS, size, device)]
    out.append(guards.benchmark_case(name="benchmark", seed=seed, shapes=shapes, points=10, settings=settings))
    return out


# --------------------------------------------------------------------------------------------
# check: trusted
# --------------------------------------------------------------------------------------------


def _atol(expected: torch.Tensor) -> float:
    if expected.numel() == 0:
        return 0.0
    return ATOL_FACTOR * expected.pow(2).mean().sqrt().item()


def _compare(actual, expected: torch.Tensor, *, what: str, device: str | None = None, got_device=None) -> None:
    if not isinstance(actual, torch.Tensor):
        raise CheckFailed(f"{what}: expected a tensor, got {type(actual).__name__}")
    if device is not None and got_device != device:
        raise CheckFailed(
            f"{what}: the result is on {got_device}, expected {device} like the inputs; run the {device} "
            "path for these tensors and return its output there"
        )
    if actual.dtype != torch.float32:
        raise CheckFailed(f"{what}: dtype {actual.dtype}, expected torch.float32 (the inputs' dtype)")
    assert_close(actual.to(torch.float64), expected, what=what, rtol=RTOL, atol=_atol(expected))


def _check_matmul(case: dict, output) -> None:
    inputs, expected = case["inputs"], case["expected"]
    if inputs["kind"] == "matmul":
        sizes = [(a.shape[0], a.shape[1], b.shape[1]) for a, b in inputs["pairs"]]
        how = ""
    else:
        sizes = [(inputs["a_t"].shape[1], inputs["a_t"].shape[0], inputs["b_t"].shape[0])]
        how = ", a and b transposed views (non-contiguous)"
    if not isinstance(output, list) or len(output) != len(expected):
        raise CheckFailed("run() returned a malformed result")
    for (m, k, n), result, reference in zip(sizes, output, expected, strict=True):
        what = f"matmul of a {m}x{k} by a {k}x{n} matrix ({inputs['device']}{how})"
        _compare(field(result, "out"), reference, what=what, device=inputs["device"], got_device=result.get("device"))


def _check_linear(case: dict, output) -> None:
    inputs, expected = case["inputs"], case["expected"]
    x, w = inputs["x"], inputs["weight"]
    bias = "with bias" if inputs["bias"] is not None else "bias=None"
    label = f"MatmulLinearFunction, x {tuple(x.shape)}, weight {tuple(w.shape)}, {bias}"
    forward_calls, backward_calls = field(output, "forward_calls"), field(output, "backward_calls")
    if forward_calls < 1:
        raise CheckFailed(
            f"{label}: forward did not call matmul; compute x @ weight.T with this module's matmul(a, b) (the "
            "grader counts calls to the module-level name matmul, so call it by that name)"
        )
    if backward_calls < 2:
        raise CheckFailed(
            f"{label}: backward called matmul {backward_calls} time(s); both gradient products, grad_x = "
            "grad_output @ weight and grad_weight = grad_output.T @ x, must use matmul"
        )
    names = {"out": "output", "grad_x": "grad of x", "grad_weight": "grad of weight", "grad_bias": "grad of bias"}
    for key, reference in expected.items():
        actual = field(output, key)
        if actual is None:
            raise CheckFailed(f"{label}: {names[key]} is None: backward returned None for an input that requires grad")
        device = inputs["device"] if key == "out" else None
        _compare(actual, reference, what=f"{label}: {names[key]}", device=device, got_device=output.get("device"))


def _expected_at(shape: dict, call: int, positions: torch.Tensor) -> torch.Tensor:
    """Output elements of one timed call: one row of a times one column of b each, rebuilt here."""
    (_, k), (_, n) = shape["inputs"][0]["shape"], shape["inputs"][1]["shape"]
    rows, cols = positions // n, positions % n
    ks = torch.arange(k, dtype=torch.int64)
    a_index = (rows[:, None] * k + ks[None, :]).reshape(-1)
    b_index = (ks[None, :] * n + cols[:, None]).reshape(-1)
    a, b = guards.call_inputs(shape, call, flat_indices=[a_index, b_index])
    return (a.double().reshape(-1, k) * b.double().reshape(-1, k)).sum(dim=1)


def _check_benchmark(case: dict, output) -> dict:
    runtime = case["runtime"]
    shapes = case["benchmark"]["shapes"]
    (m, k), (_, n) = shapes[YOURS]["inputs"][0]["shape"], shapes[YOURS]["inputs"][1]["shape"]
    results = guards.verify(
        case,
        output,
        spec=runtime["spec"],
        envelopes=runtime["envelopes"],
        expected_at=_expected_at,
        output_shape=lambda shape: [m, n],
        rtol=RTOL,
        atol=ATOL_FACTOR * math.sqrt(k / 9),  # uniform [-1, 1) inputs: the output's RMS is sqrt(k / 9)
    )
    flops = 2 * m * k * n
    if min(results[YOURS]["median"], results[CUBLAS]["median"]) <= 0:
        raise guards.BenchmarkRejected("benchmark: a median time of zero was reported; the timing is not real")
    yours, reference = (flops / results[label]["median"] / 1e12 for label in (YOURS, CUBLAS))  # TFLOP/s
    ratio = yours / reference
    figures = guards.shape_figures(results)
    size = f"{m}x{k}x{n} float32"
    if runtime["device"] != "cuda":
        return {
            "message": f"Timed on the CPU (this worker has no GPU), not ranked: at {size} your C++ matmul ran at "
            f"{1e3 * yours:.3g} GFLOP/s, torch.mm (one thread) at {1e3 * reference:.3g} GFLOP/s "
            f"({ratio:.3g}x).\n" + figures,
        }
    fraction = results[CUBLAS].get("compute_fraction")
    if fraction is not None and fraction < MIN_CUBLAS_PEAK_FRACTION:
        raise guards.BenchmarkRejected(
            f"benchmark: the cuBLAS reference ran at only {reference:.3g} TFLOP/s ({100 * fraction:.1f}% of "
            f"{runtime['spec'].name}'s fp32 peak), far below what cuBLAS does; the GPU was busy or the "
            "reference's timing was interfered with, so the ratio cannot be trusted. Resubmit; do not start work "
            "that outlives your matmul call."
        )
    return {
        "metric": ratio,
        "message": f"{ratio:.3f} of cuBLAS at {size}: yours {yours:.3g} TFLOP/s, cuBLAS (torch.mm, TF32 off) "
        f"{reference:.3g} TFLOP/s\n" + figures,
    }


def check(case: dict, output) -> dict | None:
    kind = case["inputs"]["kind"]
    if kind in ("matmul", "matmul_transposed"):
        _check_matmul(case, output)
    elif kind == "linear":
        _check_linear(case, output)
    elif kind == "benchmark":
        return _check_benchmark(case, output)
    else:
        raise CheckFailed(f"internal grader error: unknown case kind {kind!r}")
    return None

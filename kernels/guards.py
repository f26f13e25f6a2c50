"""The trusted half of benchmarking: build a benchmark case, then refuse reports that cannot be true.

``kernels.bench`` times inside the sandbox, in the same process as the student's code, so
everything it reports could be forged. This module runs in the worker and accepts a report only
if it survives every check that does not need the sandbox's honesty:

- **timed outputs:** a sample of the timed calls, chosen here after the fact, is recomputed from
  the call's seed (``kernels.bench.fresh_values``) and compared at the fingerprinted positions;
  a kernel that caches, skips or batches its work fails;
- **physical floor:** no call can beat its bytes at peak bandwidth or its FLOPs at peak compute
  (``kernels.devices.floor_seconds``);
- **wall-clock envelope:** the parent's own clock brackets each shape's timed batch (the sandbox
  waits for the parent's go-ahead before it starts); the reported times must fit in it, and with
  the floor that bounds the number of calls too;
- **event vs host time (GPU):** a call whose synchronised host time far exceeds its event time
  did its work off the timed stream.

A rejected report raises :class:`BenchmarkRejected` with a message for the student.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch

from kernels import bench
from kernels.devices import DeviceSpec, floor_seconds, roofline
from labs.trusted import CheckFailed

# Datasheet peaks are rounded and boost clocks vary by a few percent: a time within 5% of the
# floor is allowed, one below that is not physics.
FLOOR_SLACK = 0.95
# The parent reads the end of a batch a little after it happens, never before: the envelope can
# only be too long. 1% and 5 ms absorb the reporting of the times themselves.
ENVELOPE_RELATIVE_SLACK, ENVELOPE_ABSOLUTE_SLACK = 0.01, 5e-3
# Host minus event time beyond launch and synchronisation overhead. Honest kernels show a few us
# (the null gap) on H100; work on a side stream shows its whole duration.
GAP_RELATIVE, GAP_ABSOLUTE = 0.5, 20e-6
MAX_NULL_GAP_SECONDS = 100e-6  # the sandbox measures the null gap; a larger claim is not believed
AUDIT_CALLS = 12


class BenchmarkRejected(CheckFailed):
    """A benchmark report that fails a guard; the message says which and what to change."""


def benchmark_case(
    *,
    name: str,
    seed: int,
    shapes: Sequence[dict],
    points: float = 0.0,
    settings: dict | None = None,
) -> dict:
    """A grader's benchmark case. Each shape: ``label``, ``inputs`` (tensor specs for
    ``bench.make_inputs``), ``bytes`` and/or ``flops`` (compulsory traffic and work per call) and
    ``dtype`` (for the compute peak). Only labels, seeds and input specs enter the sandbox; the
    audit seed stays here."""
    rng = random.Random(seed)
    sent, kept = [], {}
    for shape in shapes:
        shape_seed = rng.getrandbits(48)
        sent.append({"label": shape["label"], "seed": shape_seed, "inputs": shape["inputs"]})
        kept[shape["label"]] = {
            "seed": shape_seed,
            "inputs": shape["inputs"],
            "bytes": float(shape.get("bytes", 0)),
            "flops": float(shape.get("flops", 0)),
            "dtype": shape.get("dtype"),
        }
    return {
        "name": name,
        "points": points,
        "inputs": {"kind": "benchmark", "shapes": sent, "settings": dict(settings or {})},
        "benchmark": {"shapes": kept, "audit_seed": rng.getrandbits(63)},
    }


def call_inputs(shape: dict, call: int, *, flat_indices: Sequence[torch.Tensor | None] | None = None) -> list:
    """Rebuild call ``call``'s inputs (all of them, or only the elements at ``flat_indices``), as
    ``bench.run_case`` made them in the sandbox."""
    return bench.make_inputs(shape["inputs"], bench.call_seed(shape["seed"], call), flat_indices=flat_indices)


ExpectedAt = Callable[[dict, int, torch.Tensor], torch.Tensor]


def verify(
    case: dict,
    report,
    *,
    spec: DeviceSpec,
    envelopes: dict[str, float],
    expected_at: ExpectedAt,
    output_shape: Callable[[dict], Sequence[int]],
    rtol: float,
    atol: float,
) -> dict:
    """Check a ``bench.run_case`` report against the case; return per-shape figures, or raise.

    ``expected_at(shape, call, positions)`` gives the reference output of call ``call`` at the
    flat ``positions`` (float64), computed here; ``output_shape(shape)`` the output's shape.
    """
    if not isinstance(report, dict) or report.get("format") != bench.FORMAT:
        raise BenchmarkRejected("benchmark: run() did not return a kernels.bench report")
    reported = report.get("shapes")
    kept = case["benchmark"]["shapes"]
    if not isinstance(reported, list) or [s.get("label") for s in reported if isinstance(s, dict)] != list(kept):
        raise BenchmarkRejected(f"benchmark: the report does not cover the shapes {list(kept)} in order")
    audit = random.Random(case["benchmark"]["audit_seed"])
    results = {}
    for timing in reported:
        label = timing["label"]
        shape = kept[label]
        seconds = _seconds(timing, label)
        _check_calls(timing, label, seconds)
        _audit_outputs(timing, shape, label, audit, expected_at, output_shape(shape), rtol, atol)
        floor = floor_seconds(spec, bytes_moved=shape["bytes"], flops=shape["flops"], dtype=shape["dtype"])
        _check_floor(seconds, floor, shape, spec, label)
        _check_envelope(timing, seconds, envelopes.get(label), label)
        if timing.get("mode") == "cuda-events":
            _check_host_gap(timing, seconds, label)
        summary = bench.summarize(seconds)
        results[label] = {
            **summary,
            "mode": timing.get("mode"),
            "calls": timing["calls"],
            "envelope_seconds": envelopes.get(label),
            **roofline(
                spec, seconds=summary["median"], bytes_moved=shape["bytes"], flops=shape["flops"], dtype=shape["dtype"]
            ),
        }
    return results


def _seconds(timing: dict, label: str) -> list[float]:
    seconds = timing.get("seconds")
    if not isinstance(seconds, list) or not seconds:
        raise BenchmarkRejected(f"benchmark {label}: no timed samples were reported")
    if not all(isinstance(s, (int, float)) and math.isfinite(s) and s >= 0 for s in seconds):
        raise BenchmarkRejected(f"benchmark {label}: the reported times are not finite non-negative numbers")
    return [float(s) for s in seconds]


def _check_calls(timing: dict, label: str, seconds: list[float]) -> None:
    calls, per_sample = timing.get("calls"), timing.get("calls_per_sample", 1)
    if not isinstance(calls, int) or not isinstance(per_sample, int) or per_sample < 1:
        raise BenchmarkRejected(f"benchmark {label}: malformed call count")
    if calls != len(seconds) * per_sample:
        raise BenchmarkRejected(
            f"benchmark {label}: {len(seconds)} samples of {per_sample} calls do not make the {calls} calls reported"
        )
    prints = timing.get("fingerprints")
    if not isinstance(prints, list) or sorted(p.get("call") for p in prints if isinstance(p, dict)) != list(
        range(calls)
    ):
        raise BenchmarkRejected(
            f"benchmark {label}: not every timed call left its output fingerprint; every timed output is checked"
        )


def _audit_outputs(timing, shape, label, audit: random.Random, expected_at, out_shape, rtol, atol) -> None:
    """Recompute a sample of timed calls, chosen here, where they were fingerprinted."""
    prints = {p["call"]: p for p in timing["fingerprints"]}
    calls = sorted(prints)
    chosen = sorted(set(audit.sample(calls, min(AUDIT_CALLS, len(calls))) + [calls[0], calls[-1]]))
    numel = math.prod(out_shape)
    for call in chosen:
        record = prints[call]
        where = f"benchmark {label}, timed call {call + 1} of {len(calls)}"
        if list(record.get("shape", [])) != list(out_shape):
            raise BenchmarkRejected(f"{where}: output shape {record.get('shape')}, expected {list(out_shape)}")
        values = record.get("values")
        positions = bench.fingerprint_positions(numel, shape["seed"], call, len(values) if values is not None else 0)
        if not isinstance(values, torch.Tensor) or values.shape != positions.shape:
            raise BenchmarkRejected(f"{where}: malformed output fingerprint")
        expected = expected_at(shape, call, positions).to(torch.float64)
        got = values.to(torch.float64)
        bad = ~((got - expected).abs() <= atol + rtol * expected.abs())
        bad |= torch.isnan(got) & ~torch.isnan(expected)
        if bool(bad.any()):
            first = int(bad.nonzero()[0])
            raise BenchmarkRejected(
                f"{where}: wrong output at element {int(positions[first])} (got {got[first].item():.6g}, expected "
                f"{expected[first].item():.6g}); {int(bad.sum())} of {len(positions)} checked elements differ. "
                "Every timed call gets fresh inputs: compute each result, do not cache or skip work."
            )


def _check_floor(seconds, floor: float, shape: dict, spec: DeviceSpec, label: str) -> None:
    fastest = min(seconds)
    if floor > 0 and fastest < floor * FLOOR_SLACK:
        what = []
        if shape["bytes"]:
            what.append(f"{shape['bytes'] / 1e6:.3g} MB at {spec.memory_bandwidth / 1e9:.0f} GB/s")
        if shape["flops"]:
            what.append(f"{shape['flops'] / 1e9:.3g} GFLOP at peak")
        raise BenchmarkRejected(
            f"benchmark {label}: a call was reported at {fastest * 1e6:.3g} us, below the physical floor of "
            f"{floor * 1e6:.3g} us on {spec.name} ({', '.join(what)}). That time is impossible, so the timing "
            "was tampered with; the result is rejected."
        )


def _check_envelope(timing: dict, seconds, envelope: float | None, label: str) -> None:
    """Every sample is at least the floor (checked first), so this also bounds the call count."""
    if envelope is None:
        raise BenchmarkRejected(
            f"benchmark {label}: the grader saw no timed batch for this shape (the harness's begin/end marks "
            "are missing), so the reported times cannot be trusted"
        )
    allowed = envelope * (1 + ENVELOPE_RELATIVE_SLACK) + ENVELOPE_ABSOLUTE_SLACK
    busy = sum(seconds) * timing.get("calls_per_sample", 1)
    if busy > allowed:
        raise BenchmarkRejected(
            f"benchmark {label}: {timing['calls']} calls reported {busy:.4g} s of timed work, but the grader's own "
            f"clock saw the batch take {envelope:.4g} s; the reported times are not real"
        )


def _check_host_gap(timing: dict, seconds, label: str) -> None:
    host = timing.get("host_seconds")
    if not isinstance(host, list) or len(host) != len(seconds):
        raise BenchmarkRejected(f"benchmark {label}: host times are missing")
    null_gap = min(max(float(timing.get("null_gap_seconds") or 0.0), 0.0), MAX_NULL_GAP_SECONDS)
    gap = sorted(h - s for h, s in zip(host, seconds, strict=True))[len(host) // 2]
    event = sorted(seconds)[len(seconds) // 2]
    if gap - null_gap > max(GAP_RELATIVE * event, GAP_ABSOLUTE):
        raise BenchmarkRejected(
            f"benchmark {label}: the device-wide synchronised time of a call ({(event + gap) * 1e6:.3g} us) far "
            f"exceeds its CUDA-event time ({event * 1e6:.3g} us): work ran outside the timed stream (a side stream "
            "or another thread). Launch all work on the current stream."
        )


def shape_figures(results: dict) -> str:
    """One line per shape for the student: median time, GB/s or TFLOP/s and fraction of peak."""
    lines = []
    for label, r in results.items():
        parts = [f"{label}: median {r['median'] * 1e6:.4g} us over {r['samples']} samples ({r['mode']})"]
        if "gb_per_s" in r:
            parts.append(f"{r['gb_per_s']:.4g} GB/s ({100 * r['bandwidth_fraction']:.1f}% of peak)")
        if "tflop_per_s" in r and r.get("compute_fraction") is not None:
            parts.append(f"{r['tflop_per_s']:.4g} TFLOP/s ({100 * r['compute_fraction']:.1f}% of peak)")
        lines.append(", ".join(parts))
    return "\n".join(lines)

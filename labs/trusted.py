"""The trusted side's library: what a lab's ``grader.py`` (``cases`` and ``check``) builds on.

It runs in the worker, never in the sandbox. A check raises :class:`CheckFailed` with a message a
student can act on; the runner turns it into a failed test. Everything a check reads from
``output`` came from the student's process: :func:`field` fetches a key with a clear message when
the result is malformed, and :func:`assert_close` checks type, shape and dtype before any math
(the runner has already refused oversized, compressed and self-repeating tensors).
"""

from __future__ import annotations

import math

import torch


class CheckFailed(Exception):
    """A hidden check found the submission's output wrong; the message is shown to the student."""


def field(output, key: str, where: str = "run()"):
    """``output[key]``, or a failed check saying the result is malformed."""
    if not isinstance(output, dict):
        raise CheckFailed(f"{where} returned {type(output).__name__}, expected a dict; the result is malformed")
    if key not in output:
        raise CheckFailed(f"{where} returned no '{key}'; the result is malformed")
    return output[key]


def assert_close(actual, expected: torch.Tensor, *, what: str, rtol: float, atol: float) -> None:
    """Compare ``actual`` with ``expected`` and say where and by how much they differ."""
    if not isinstance(actual, torch.Tensor):
        raise CheckFailed(f"{what}: expected a tensor, got {type(actual).__name__}")
    if actual.shape != expected.shape:
        raise CheckFailed(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if actual.dtype != expected.dtype:
        raise CheckFailed(f"{what}: dtype {actual.dtype}, expected {expected.dtype}")
    if actual.numel() == 0:
        return
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    if not torch.isfinite(a).all() and not torch.equal(torch.isfinite(a), torch.isfinite(e)):
        bad = (~torch.isfinite(a)).nonzero()[0].tolist()
        raise CheckFailed(f"{what}: non-finite value {a[tuple(bad)].item()} at index {tuple(bad)}")
    diff = (a - e).abs()
    allowed = atol + rtol * e.abs()
    if bool((diff <= allowed).all()):
        return
    worst = int(torch.argmax(diff - allowed))
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
    max_abs = diff.max().item()
    rel = (diff / e.abs().clamp_min(1e-12)).max().item()
    raise CheckFailed(
        f"{what}: max abs error {max_abs:.3g}, max rel error {rel:.3g} (rtol {rtol:g}, atol {atol:g}); "
        f"worst at index {index}: got {a[index].item():.6g}, expected {e[index].item():.6g}"
    )


def digits_split(
    seed: int, *, test_size: int, salt: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits scaled to [0, 1], split by the seed: ``(x_train, y_train, x_test, y_test)``.

    ``salt`` keeps each lab's split its own. The held-out half stays here: hand ``run`` the
    training split only and evaluate on the rest in the worker (docs/security.md, invariant 3);
    the sandbox cannot load the digits itself (scikit-learn's data files are hidden there).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + salt))
    test, train = perm[:test_size], perm[test_size:]
    return x[train].contiguous(), y[train].contiguous(), x[test].contiguous(), y[test].contiguous()


# ------------------------------------------------------------------------------------------------
# timed cases (docs/authoring-labs.md, "Timed cases"): the worker's times and the calls' fingerprints
# ------------------------------------------------------------------------------------------------


def check_timed_calls(case: dict, output, expected, *, rtol: float, atol: float, what: str = "timed call") -> None:
    """Every timed call must have computed the right outputs, inside the timed region.

    ``output["calls"]`` holds what the student's process said of each call: each output's dot
    product with the worker's probe, computed before the call counted as done. ``expected(inputs)``
    gives the reference outputs of one call (``case["runtime"]["inputs"]``), keyed by output name
    (``"out@2"`` for rank 2's output of a distributed call, probed like ``"out"``); a fingerprint may
    differ from the reference's by ``rtol`` of ``sum|probe * reference|`` plus ``atol`` of
    ``sum|probe|``, plus what summing in the probe's dtype in another order can change
    (``4 sqrt(n) eps`` of ``sum|probe * reference|``). A fingerprint proves the work was done;
    the correctness tests, not it, catch an element slightly off.
    """
    runtime = case["runtime"]
    probes, inputs = runtime["probes"], runtime["inputs"]
    calls = field(output, "calls", "the benchmark")
    if not isinstance(calls, list) or len(calls) != len(inputs):
        raise CheckFailed("benchmark: the fingerprints of the timed calls are missing; the result is malformed")
    for number, (call, fingerprint) in enumerate(zip(inputs, calls, strict=True)):
        reference = expected(call)
        for name, output in reference.items():
            probe = probes[name.partition("@")[0]]  # a distributed call's outputs are per rank: "out@1"
            got = fingerprint.get(name) if isinstance(fingerprint, dict) else None
            want = output.detach().to(torch.float64).reshape(-1)
            weights = probe.to(torch.float64).reshape(-1)
            value = float(torch.dot(want, weights))
            scale = float(torch.dot(want.abs(), weights.abs()))
            rounding = 4 * math.sqrt(want.numel()) * torch.finfo(probe.dtype).eps
            allowed = (rtol + rounding) * scale + atol * float(weights.abs().sum())
            if not isinstance(got, float) or not abs(got - value) <= allowed:
                raise CheckFailed(
                    f"benchmark: {what} {number + 1} of {len(inputs)} returned a wrong '{name}' (its dot product "
                    f"with a random probe is {got!r}, expected {value:.6g}): a timed call must compute the same "
                    "result as the tested ones, inside the call"
                )


def timing_summary(case: dict) -> dict:
    """The worker's times of a timed case: ``ratio`` (the median of the per-pair ratios of the
    student's time to the reference's, when there is a reference), ``seconds`` (the student's
    median) and a message for the student."""
    import statistics

    runtime = case["runtime"]
    mine, theirs = runtime["seconds"], runtime["reference_seconds"]
    if not mine or any(not (t > 0) for t in mine):
        raise CheckFailed("benchmark: the worker recorded no usable times")
    seconds = statistics.median(mine)
    guard = "" if runtime.get("frozen") else " (this worker cannot freeze the student's process meanwhile)"
    if theirs is None:
        return {
            "ratio": None,
            "seconds": seconds,
            "message": f"median {seconds * 1e3:.3f} ms over {len(mine)} timed calls, on the grader's clock",
        }
    ratio = statistics.median(m / t for m, t in zip(mine, theirs, strict=True))
    message = (
        f"yours {seconds * 1e3:.3f} ms, reference {statistics.median(theirs) * 1e3:.3f} ms (medians on the "
        f"grader's clock); median ratio {ratio:.3f} over {len(mine)} interleaved pairs, the reference timed in "
        f"a separate clean process{guard}"
    )
    return {"ratio": ratio, "seconds": seconds, "message": message}

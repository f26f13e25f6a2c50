"""Helpers for the trusted half of a lab's grader (``cases`` and ``check``).

Graders raise :class:`CheckFailed` with a message a student can act on; the runner turns it
into a failed test. Nothing here runs inside the sandbox.
"""

from __future__ import annotations

import torch


class CheckFailed(Exception):
    """A hidden check found the submission's output wrong; the message is shown to the student."""


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

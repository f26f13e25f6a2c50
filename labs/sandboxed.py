"""The sandbox side's library: what a lab's ``run.py`` builds on, shipped with every job.

``run.py`` runs in the student's own process, so nothing here decides a grade or keeps a figure
that ranks: these are the guards that catch honest mistakes and the obvious shortcuts (calling
the library, not launching a kernel), with messages that say what to change. Each patch is
undone when its block ends, whatever happens inside it.

Importable in the sandbox as ``labs.sandboxed`` (the runner's ``lib/`` folder), like
``labs.ranks`` and ``kernels.bench``; it imports torch and nothing of the project's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def refused(owner: object, names, harness, *, label: str | None = None) -> Iterator[None]:
    """Within the block, ``owner.<name>`` raises the harness's forbidden-call error for every name
    in ``names`` that ``owner`` has (``refused(torch.Tensor, ("softmax",), harness)``)."""
    label = label or getattr(owner, "__qualname__", str(owner))
    saved = {name: getattr(owner, name) for name in names if hasattr(owner, name)}

    def refusing(name: str):
        dotted = f"torch.{label}.{name}" if label == "Tensor" else f"{label}.{name}"

        def refuse(*args, **kwargs):
            raise harness.forbidden(dotted)

        return refuse

    try:
        for name in saved:
            setattr(owner, name, refusing(name))
        yield
    finally:
        for name, original in saved.items():
            setattr(owner, name, original)


class Launches:
    """How many Triton kernels were launched in a ``count_launches()`` block."""

    def __init__(self) -> None:
        self.count = 0


@contextlib.contextmanager
def count_launches() -> Iterator[Launches]:
    """Count Triton kernel launches (compiled or in the interpreter) within the block."""
    import triton

    kinds = [triton.runtime.jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        kinds.append(InterpretedFunction)
    except ImportError:
        pass
    launches = Launches()
    saved = {kind: kind.run for kind in kinds}

    def counted(original):
        def run_kernel(self, *args, **kwargs):
            launches.count += 1
            return original(self, *args, **kwargs)

        return run_kernel

    try:
        for kind in kinds:
            kind.run = counted(saved[kind])
        yield launches
    finally:
        for kind, original in saved.items():
            kind.run = original


def poison(numel: int, dtype: torch.dtype, device: str | torch.device) -> None:
    """Allocate and free ``numel`` NaNs: the caching allocator hands that memory to the next
    allocation of that size, so elements a kernel never writes show as NaN, not as a lucky value."""
    torch.full((max(int(numel), 1),), float("nan"), dtype=dtype, device=device)


def plain(value, what: str) -> torch.Tensor:
    """``value`` detached on the CPU, or a TypeError saying what ``what`` should have returned."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} returned {type(value).__name__}, expected a torch.Tensor")
    return value.detach().cpu()

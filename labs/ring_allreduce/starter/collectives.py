"""Ring collectives lab: all-reduce, reduce-scatter and all-gather from send and recv.

Use only torch.distributed.send / recv / isend / irecv (the collectives raise during grading).
See README.md for the exact contract.
"""

from __future__ import annotations

import torch
import torch.distributed as dist  # noqa: F401 - you will need it


def ring_allreduce(t: torch.Tensor) -> torch.Tensor | None:
    """Sum ``t`` over all ranks, in place: afterwards every rank's ``t`` holds the same
    elementwise sum, bit for bit. Return ``t`` (or None)."""
    raise NotImplementedError("ring_allreduce: not written yet (README.md, 'The task')")


def ring_reduce_scatter(t: torch.Tensor) -> torch.Tensor:
    """``t`` is 1-D with the same length N on every rank. Return this rank's chunk of the sum:
    ``torch.tensor_split(sum, world_size)[rank]``. ``t`` may be used as scratch space."""
    raise NotImplementedError("ring_reduce_scatter: not written yet (README.md, 'The task')")


def ring_allgather(chunk: torch.Tensor) -> torch.Tensor:
    """``chunk`` is 1-D; its length may differ between ranks (zero included). Return every rank's
    chunk concatenated in rank order, the same on every rank."""
    raise NotImplementedError("ring_allgather: not written yet (README.md, 'The task')")

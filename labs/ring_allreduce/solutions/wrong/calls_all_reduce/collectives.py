"""Wrong: uses the library's collectives, which this lab forbids."""

from __future__ import annotations

import torch
import torch.distributed as dist


def ring_allreduce(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return t


def ring_reduce_scatter(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return torch.tensor_split(t, dist.get_world_size())[dist.get_rank()].clone()


def ring_allgather(chunk: torch.Tensor) -> torch.Tensor:
    pieces: list = [None] * dist.get_world_size()
    dist.all_gather_object(pieces, chunk)
    return torch.cat(pieces)

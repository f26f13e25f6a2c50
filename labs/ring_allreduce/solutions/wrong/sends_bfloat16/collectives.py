"""Wrong (lower precision): float chunks travel as bfloat16 to halve the bytes sent."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _neighbours() -> tuple[int, int, int, int]:
    rank, size = dist.get_rank(), dist.get_world_size()
    return rank, size, (rank + 1) % size, (rank - 1) % size


def _shift(send: torch.Tensor, recv: torch.Tensor, right: int, left: int) -> None:
    """Send to the right while receiving from the left. isend first: gloo's blocking send waits
    for the matching recv, so if every rank called send first, every rank would wait forever.
    Empty chunks are skipped on both sides (both sides know every chunk's length)."""
    request = dist.isend(send, right) if send.numel() else None
    if recv.numel():
        dist.recv(recv, left)
    if request is not None:
        request.wait()


def _reduce_scatter_chunks(chunks: list[torch.Tensor]) -> None:
    rank, size, right, left = _neighbours()
    wire = torch.bfloat16 if chunks[0].is_floating_point() else chunks[0].dtype
    buffer = torch.empty(chunks[0].numel(), dtype=wire)
    for step in range(size - 1):
        send_index, recv_index = (rank - step - 1) % size, (rank - step - 2) % size
        incoming = buffer[: chunks[recv_index].numel()]
        _shift(chunks[send_index].to(wire), incoming, right, left)
        chunks[recv_index] += incoming.to(chunks[recv_index].dtype)


def _allgather_chunks(chunks: list[torch.Tensor]) -> None:
    """Fill every chunk from its owner: at step s rank r forwards chunk (r - s) to the right."""
    rank, size, right, left = _neighbours()
    for step in range(size - 1):
        _shift(chunks[(rank - step) % size], chunks[(rank - step - 1) % size], right, left)


def ring_allreduce(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks, in place; every rank ends with the same bits. Returns ``t``."""
    flat = t.view(-1) if t.is_contiguous() else t.contiguous().view(-1)
    chunks = list(torch.tensor_split(flat, dist.get_world_size()))  # views: the work is in place
    _reduce_scatter_chunks(chunks)
    _allgather_chunks(chunks)
    if flat.data_ptr() != t.data_ptr():
        t.copy_(flat.view_as(t))
    return t


def ring_reduce_scatter(t: torch.Tensor) -> torch.Tensor:
    """Rank ``i`` gets chunk ``i`` of the sum (``torch.tensor_split`` of ``N`` into ``p``).

    ``t`` is used as scratch space; its contents afterwards are unspecified.
    """
    flat = t.reshape(-1)
    chunks = list(torch.tensor_split(flat, dist.get_world_size()))
    _reduce_scatter_chunks(chunks)
    return chunks[dist.get_rank()].clone()


def ring_allgather(chunk: torch.Tensor) -> torch.Tensor:
    """Every rank's ``chunk``, concatenated in rank order. Chunks may have any lengths (zero too):
    the lengths go around the ring first, as one-element messages."""
    rank, size, _, _ = _neighbours()
    lengths = torch.zeros(size, dtype=torch.int64)
    lengths[rank] = chunk.numel()
    _allgather_chunks(list(lengths.split(1)))
    out = torch.empty(int(lengths.sum()), dtype=chunk.dtype)
    pieces = list(out.split(lengths.tolist()))
    pieces[rank].copy_(chunk.reshape(-1))
    _allgather_chunks(pieces)
    return out

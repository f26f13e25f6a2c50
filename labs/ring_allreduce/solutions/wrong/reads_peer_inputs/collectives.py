"""Solution `reads_peer_inputs`: correct on every test, but a timed call skips the messages.

It looks for its peers' tensors in the caller's frame (the lab's timed()) and adds them up itself
instead of receiving them, which would beat gloo by far. Each rank runs in a sandbox of its own and
receives only its own tensor, so whatever it finds is its own: the sum is wrong, and the
fingerprint of the first timed call says so.
"""

from __future__ import annotations

import sys

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
    """Afterwards chunks[rank] holds the sum over all ranks; the other chunks are scratch.

    At step s rank r sends chunk (r - s - 1) and adds the received chunk (r - s - 2) to its own.
    Chunk c starts at rank c + 1 and picks up one rank per step, ending complete at rank c: each
    chunk is summed once, in one order, which makes the all-reduce bit-identical on every rank.
    """
    rank, size, right, left = _neighbours()
    buffer = torch.empty_like(chunks[0])  # chunk 0 is the longest
    for step in range(size - 1):
        send_index, recv_index = (rank - step - 1) % size, (rank - step - 2) % size
        incoming = buffer[: chunks[recv_index].numel()]
        _shift(chunks[send_index], incoming, right, left)
        chunks[recv_index] += incoming


def _allgather_chunks(chunks: list[torch.Tensor]) -> None:
    """Fill every chunk from its owner: at step s rank r forwards chunk (r - s) to the right."""
    rank, size, right, left = _neighbours()
    for step in range(size - 1):
        _shift(chunks[(rank - step) % size], chunks[(rank - step - 1) % size], right, left)


def _timed_call_inputs() -> dict | None:
    """The timed call's inputs, if the caller (the lab's timed()) has them in its frame."""
    inputs = sys._getframe(2).f_locals.get("inputs")
    if isinstance(inputs, dict) and "x" in inputs and "rank" in inputs:
        return inputs
    return None


def ring_allreduce(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks, in place; every rank ends with the same bits. Returns ``t``."""
    peek = _timed_call_inputs()
    if peek is not None:  # every tensor it can find, added up here: no messages
        rows = peek["x"].reshape(-1, t.numel())
        t.copy_(rows.sum(0).view_as(t))
        return t
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

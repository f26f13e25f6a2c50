"""Wrong: every chunk has N // p elements, so the last N % p elements are never reduced (and with
fewer elements than ranks, nothing is)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _neighbours():
    rank, size = dist.get_rank(), dist.get_world_size()
    return rank, size, (rank + 1) % size, (rank - 1) % size


def _shift(send, recv, right, left):
    request = dist.isend(send, right) if send.numel() else None
    if recv.numel():
        dist.recv(recv, left)
    if request is not None:
        request.wait()


def _chunks(flat, size):
    step = flat.numel() // size  # off by the remainder
    return [flat[i * step : (i + 1) * step] for i in range(size)]


def _reduce_scatter_chunks(chunks):
    rank, size, right, left = _neighbours()
    buffer = torch.empty_like(chunks[0])
    for step in range(size - 1):
        send_index, recv_index = (rank - step - 1) % size, (rank - step - 2) % size
        _shift(chunks[send_index], buffer, right, left)
        chunks[recv_index] += buffer


def _allgather_chunks(chunks):
    rank, size, right, left = _neighbours()
    for step in range(size - 1):
        _shift(chunks[(rank - step) % size], chunks[(rank - step - 1) % size], right, left)


def ring_allreduce(t):
    chunks = _chunks(t.view(-1), dist.get_world_size())
    _reduce_scatter_chunks(chunks)
    _allgather_chunks(chunks)
    return t


def ring_reduce_scatter(t):
    chunks = _chunks(t.reshape(-1), dist.get_world_size())
    _reduce_scatter_chunks(chunks)
    return chunks[dist.get_rank()].clone()


def ring_allgather(chunk):
    rank, size, _, _ = _neighbours()
    lengths = torch.zeros(size, dtype=torch.int64)
    lengths[rank] = chunk.numel()
    _allgather_chunks(list(lengths.split(1)))
    out = torch.empty(int(lengths.sum()), dtype=chunk.dtype)
    pieces = list(out.split(lengths.tolist()))
    pieces[rank].copy_(chunk)
    _allgather_chunks(pieces)
    return out

"""Wrong (too many bytes): every rank sends its tensor to rank 0, which sums and sends the result
back. The results are right and identical, but rank 0 sends (p-1)*N elements instead of the
ring's 2(p-1)/p*N, so rank 0's link is the bottleneck."""

from __future__ import annotations

import torch
import torch.distributed as dist


def ring_allreduce(t):
    rank, size = dist.get_rank(), dist.get_world_size()
    flat = t.view(-1)
    if rank == 0:
        incoming = torch.empty_like(flat)
        for source in range(1, size):
            dist.recv(incoming, source)
            flat += incoming
        for target in range(1, size):
            dist.send(flat, target)
    else:
        dist.send(flat, 0)
        dist.recv(flat, 0)
    return t


def ring_reduce_scatter(t):
    ring_allreduce(t)
    return torch.tensor_split(t, dist.get_world_size())[dist.get_rank()].clone()


def ring_allgather(chunk):
    rank, size = dist.get_rank(), dist.get_world_size()
    lengths = torch.zeros(size, dtype=torch.int64)
    lengths[rank] = chunk.numel()
    ring_allreduce(lengths)
    out = torch.empty(int(lengths.sum()), dtype=chunk.dtype)
    pieces = list(out.split(lengths.tolist()))
    pieces[rank].copy_(chunk)
    if rank == 0:
        for source in range(1, size):
            if pieces[source].numel():
                dist.recv(pieces[source], source)
        for target in range(1, size):
            dist.send(out, target)
    else:
        if chunk.numel():
            dist.send(chunk, 0)
        dist.recv(out, 0)
    return out

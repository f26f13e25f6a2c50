"""Solution `shm_side_channel`: the payloads go through /dev/shm, not through send/recv (a cheat that fails).

A correct 3LC compressor whose ``compressed_allreduce`` writes each rank's payload and header to a
file in ``/dev/shm``, then sends one byte to each peer to say it is there; each rank reads its
peers' payloads from their files. When a job's ranks were forked in one sandbox, they shared
``/dev/shm``, and the grader, which counted the bytes passed to ``ProcessGroup.send`` inside the
sandbox, saw three bytes per rank and step: this solution succeeded, ranked with 0.002 MB for the
whole training run against the honest solution's 0.39 MB (issue 11).

Now each rank runs in a sandbox of its own, with its own ``/dev/shm``, and the grader counts the
bytes the ranks send each other on their private network. A rank finds no file from its peers
(``FileNotFoundError``), so every distributed test fails; its expected.toml records that.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile

import torch
import torch.distributed as dist

# Used by the grader's training run. On grading seeds 1 to 11, 1.25 stayed within 0.5 points of the
# uncompressed accuracy (the limit is 1) and sent 20% less than 1.0; 1.75 lost up to 9 points.
SPARSITY_MULTIPLIER = 1.25

ZERO_BYTE = 121  # five q = 0 digits: (0 + 1) * (1 + 3 + 9 + 27 + 81)
FIRST_RUN_CODE = 243  # 243..255 stand for runs of 2..14 ZERO_BYTEs
MAX_RUN = 14
_POWERS = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)


def pack_base3(q: torch.Tensor) -> torch.Tensor:
    """Five ternary digits per byte, ``sum (q[5j + i] + 1) * 3**i``; the tail is padded with q = 0."""
    digits = q.reshape(-1).to(torch.int32) + 1
    pad = (-digits.numel()) % 5
    digits = torch.cat([digits, torch.ones(pad, dtype=torch.int32)])
    return (digits.reshape(-1, 5) * _POWERS).sum(dim=1).to(torch.uint8)


def unpack_base3(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` ternary values (int8, flat) of ``pack_base3``'s bytes."""
    digits = (packed.reshape(-1).to(torch.int32)[:, None] // _POWERS) % 3
    return (digits.reshape(-1)[:n] - 1).to(torch.int8)


def zero_run_encode(data: torch.Tensor) -> torch.Tensor:
    """Replace runs of ZERO_BYTE: 14 at a time by 255, a remaining run of 2..13 by 241 + length."""
    data = data.reshape(-1)
    if data.numel() == 0:
        return data.to(torch.uint8).clone()
    is_zero = data == ZERO_BYTE
    # One segment per run of ZERO_BYTEs and one per other byte: those keys are all distinct.
    key = torch.where(is_zero, torch.tensor(-1), torch.arange(data.numel()))
    first, length = torch.unique_consecutive(key, return_counts=True)
    is_run = first < 0
    full = torch.where(is_run, length // MAX_RUN, 0)
    rest = torch.where(is_run, length % MAX_RUN, 1)
    run_tail = torch.where(rest >= 2, FIRST_RUN_CODE - 2 + rest, ZERO_BYTE)
    tail = torch.where(is_run, run_tail, data[first.clamp(min=0)].to(torch.int64))
    count = full + (rest > 0)
    out = torch.full((int(count.sum()),), FIRST_RUN_CODE - 2 + MAX_RUN, dtype=torch.int64)  # 255s
    has_tail = rest > 0
    out[(count.cumsum(0) - 1)[has_tail]] = tail[has_tail]
    return out.to(torch.uint8)


def zero_run_decode(data: torch.Tensor) -> torch.Tensor:
    """Inverse of ``zero_run_encode``."""
    data = data.reshape(-1)
    is_code = data >= FIRST_RUN_CODE
    counts = torch.where(is_code, data.to(torch.int64) - (FIRST_RUN_CODE - 2), 1)
    values = torch.where(is_code, torch.tensor(ZERO_BYTE, dtype=torch.uint8), data)
    return values.repeat_interleave(counts)


class ThreeLC:
    """3LC compressor for one tensor (one per gradient: the residual is that tensor's error)."""

    def __init__(self, sparsity_multiplier: float = 1.0) -> None:
        if not 1.0 <= sparsity_multiplier < 2.0:
            raise ValueError(f"sparsity_multiplier must be in [1, 2), got {sparsity_multiplier}")
        self.sparsity_multiplier = float(sparsity_multiplier)
        self.residual: torch.Tensor | None = None

    def compress(self, t: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x = t.detach().to(torch.float32)
        if self.residual is not None:
            x = x + self.residual
        scale = x.abs().max() * self.sparsity_multiplier  # float32, M = max|x| * s
        q = torch.where(x.abs() >= scale * 0.5, torch.sign(x), torch.zeros_like(x)).to(torch.int8)
        self.residual = x - q.to(torch.float32) * scale
        payload = zero_run_encode(pack_base3(q))
        return payload, {"shape": list(t.shape), "scale": float(scale)}

    def decompress(self, payload: torch.Tensor, meta: dict) -> torch.Tensor:
        shape = [int(d) for d in meta["shape"]]
        q = unpack_base3(zero_run_decode(payload), math.prod(shape))
        scale = torch.tensor(meta["scale"], dtype=torch.float32)
        return (q.to(torch.float32) * scale).reshape(shape)


_calls = [0]  # this process's calls so far: the same on every rank, since every rank calls in step


def _board() -> str:
    """A folder every rank of this job can read and write, with no byte counter on it."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _slot(call: int, rank: int) -> str:
    # MASTER_PORT, where set, is the group's own: one namespace per group.
    return os.path.join(_board(), f"3lc_{os.environ.get('MASTER_PORT', '0')}_{call}_{rank}")


def compressed_allreduce(t: torch.Tensor, compressor: ThreeLC) -> None:
    """Average ``t`` over all ranks in place: the payloads go through shared memory, and each rank
    sends one byte to each peer to say its payload is there."""
    rank, world = dist.get_rank(), dist.get_world_size()
    _calls[0] += 1
    call = _calls[0]
    payload, meta = compressor.compress(t)
    header = struct.pack("<fi", meta["scale"], payload.numel())
    staging = _slot(call, rank) + ".tmp"
    with open(staging, "wb") as f:
        f.write(header + payload.numpy().tobytes())
    os.replace(staging, _slot(call, rank))
    peers = [r for r in range(world) if r != rank]
    ready = torch.ones(1, dtype=torch.uint8)
    signals = {r: torch.empty(1, dtype=torch.uint8) for r in peers}
    work = [dist.isend(ready, r) for r in peers] + [dist.irecv(signals[r], r) for r in peers]
    for w in work:
        w.wait()
    total = torch.zeros(t.shape, dtype=torch.float32)
    for r in range(world):
        with open(_slot(call, r), "rb") as f:
            data = f.read()
        scale, length = struct.unpack("<fi", data[:8])
        received = torch.frombuffer(bytearray(data[8 : 8 + length]), dtype=torch.uint8)
        total += compressor.decompress(received, {"shape": list(t.shape), "scale": scale})
    t.copy_(total / world)

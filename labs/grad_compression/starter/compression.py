"""3LC gradient compression lab: compress gradients to ~1.6 bits per value and average them over ranks.

Fill in the functions below; README.md defines every format bit for bit. Only send/recv/isend/irecv
may move data between ranks (the collectives raise "forbidden call" during grading).
"""

from __future__ import annotations

import torch
import torch.distributed as dist  # noqa: F401 (compressed_allreduce needs it)

# The sparsity multiplier s (1 <= s < 2) the grader's training run uses: larger s, fewer bytes,
# more quantization error. See "The metric" in the README.
SPARSITY_MULTIPLIER = 1.0

ZERO_BYTE = 121  # the byte of five q = 0 digits


def pack_base3(q: torch.Tensor) -> torch.Tensor:
    """Pack ternary int8 ``q`` (-1, 0, 1; any shape, read flat) into ceil(n / 5) uint8 bytes.

    Byte j is sum over i < 5 of (q[5j + i] + 1) * 3**i; pad a short last group with q = 0.
    """
    raise NotImplementedError("implement pack_base3: five ternary digits per byte (README, stage 2)")


def unpack_base3(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` ternary values (flat int8) of ``pack_base3``'s bytes."""
    raise NotImplementedError("implement unpack_base3, the inverse of pack_base3 (README, stage 2)")


def zero_run_encode(data: torch.Tensor) -> torch.Tensor:
    """Replace runs of 2..14 ZERO_BYTEs by one byte 243..255 (greedy, left to right)."""
    raise NotImplementedError("implement zero_run_encode (README, stage 3)")


def zero_run_decode(data: torch.Tensor) -> torch.Tensor:
    """Inverse of ``zero_run_encode``: each byte b >= 243 becomes b - 241 ZERO_BYTEs."""
    raise NotImplementedError("implement zero_run_decode (README, stage 3)")


class ThreeLC:
    """3LC compressor for one tensor, with error feedback.

    ``self.residual`` is None before the first ``compress`` and afterwards the float32 error that was
    not sent (x - q * M, shaped like the tensor); the next ``compress`` adds it to its input first.
    """

    def __init__(self, sparsity_multiplier: float = 1.0) -> None:
        self.sparsity_multiplier = float(sparsity_multiplier)
        self.residual: torch.Tensor | None = None

    def compress(self, t: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Return (payload, meta): payload = zero_run_encode(pack_base3(q)), a 1-D uint8 tensor, and
        meta = {"shape": list(t.shape), "scale": M} with M a Python float. Update self.residual."""
        raise NotImplementedError("implement ThreeLC.compress: quantize t + residual, pack, zero-run encode")

    def decompress(self, payload: torch.Tensor, meta: dict) -> torch.Tensor:
        """The float32 tensor q * M of shape meta["shape"], from the payload and meta alone."""
        raise NotImplementedError("implement ThreeLC.decompress, the inverse of compress's encoding")


def compressed_allreduce(t: torch.Tensor, compressor: ThreeLC) -> None:
    """Average ``t`` over all ranks in place: t = (1 / p) * sum over ranks r = 0..p-1 of rank r's
    decompressed payload, added in rank order. Exchange only payloads (and a small header) with
    dist.send/recv/isend/irecv."""
    raise NotImplementedError("implement compressed_allreduce: compress, exchange payloads, decompress, average")

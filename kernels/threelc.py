"""3LC's ternary quantization and base-3^5 ("quintuple") packing as Triton kernels.

3LC (Lim, Andersen, Kaminsky, "3LC: Lightweight and Effective Traffic Compression for Distributed
Machine Learning", SysML 2019) compresses a gradient tensor ``t`` in three stages; the first two are
here (the reference for the ``grad_compression`` lab):

1. 3-value quantization with sparsity multiplication: ``M = max|t| * s`` with ``1 <= s < 2`` and
   ``q = round(t / M)``, so ``q`` is in ``{-1, 0, 1}`` and ``t ~ q * M``. A larger ``s`` raises the
   threshold, makes more zeros and so compresses better at the cost of more error, which 3LC's
   error feedback (in the lab, not here) carries over to the next step.
2. Quartic encoding: five ternary digits ``d_i = q_i + 1`` become one byte ``sum d_i * 3**i``
   (0..242), 1.6 bits per value. A tail shorter than five is padded with ``q = 0`` digits (``d = 1``).
   (The paper's third stage, zero-run encoding of the bytes, is not needed here.)

Rounding is defined exactly, with no division: ``q = sign(t)`` where ``|t| >= M / 2`` and ``0``
elsewhere. That is round-half-away-from-zero of the exact quotient ``t / M`` (which lies in
``[-1, 1]`` because ``s >= 1``), and since ``M / 2`` is exact in floating point and the comparison is
exact, the kernel and the torch reference agree bit for bit on every device. (A computed ``t / M``
would not: GPU float division is approximate by default, so values at the 0.5 boundary could flip.)

Edge cases, defined: an all-zero (or empty) tensor has ``M = 0`` and quantizes to all zeros, with
no division by zero anywhere; a tensor containing inf or NaN raises ``ValueError`` (its scale would
be meaningless; a training loop should skip such a step, as AMP's grad scaler does).

On machines without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = [
    "pack_base3",
    "pack_base3_reference",
    "ternary_dequantize",
    "ternary_dequantize_reference",
    "ternary_quantize",
    "ternary_quantize_reference",
    "unpack_base3",
    "unpack_base3_reference",
]

# Elements per program for these memory-bound elementwise kernels: the value of Triton's
# vector-add tutorial, not measured here; re-measure with bench/kernels.py on a GPU.
_BLOCK = 1024
# Bytes per program for packing (each reads 5 int8 per byte written).
_PACK_BLOCK = 1024

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DIGITS_PER_BYTE = 5
_MAX_PACKED = 3**_DIGITS_PER_BYTE - 1  # 242


@triton.jit
def _abs_max_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    # One partial maximum of |x| per program, in fp32 (exact for fp16/bf16/fp32 inputs). NaN becomes
    # +inf so that it cannot vanish in the max (tl.max does not propagate NaN) and the host sees it.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.where(x == x, tl.abs(x), float("inf"))
    tl.store(out_ptr + tl.program_id(0), tl.max(a, axis=0))


@triton.jit
def _ternary_quantize_kernel(x_ptr, q_ptr, scale, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    half = scale * 0.5  # exact: a power-of-two multiple
    sign = tl.where(x > 0, 1, tl.where(x < 0, -1, 0))
    q = tl.where(tl.abs(x) >= half, sign, 0)
    tl.store(q_ptr + offs, q.to(tl.int8), mask=mask)


@triton.jit
def _ternary_dequantize_kernel(q_ptr, out_ptr, scale, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    q = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.float32)
    tl.store(out_ptr + offs, q * scale, mask=mask)


@triton.jit
def _pack_base3_kernel(q_ptr, out_ptr, n, n_bytes, BLOCK: tl.constexpr):
    byte = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    byte_mask = byte < n_bytes
    value = tl.zeros((BLOCK,), dtype=tl.int32)
    power = 1
    for i in tl.static_range(5):
        idx = byte * 5 + i
        # Past the end: q = 0, digit 1 (the padding 3LC defines).
        q = tl.load(q_ptr + idx, mask=byte_mask & (idx < n), other=0).to(tl.int32)
        value += (q + 1) * power
        power *= 3
    tl.store(out_ptr + byte, value.to(tl.uint8), mask=byte_mask)


@triton.jit
def _unpack_base3_kernel(packed_ptr, q_ptr, n, BLOCK: tl.constexpr):
    # One output element per lane: consecutive lanes write consecutive int8 (coalesced) and read the
    # same byte five times over (served from cache).
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    byte = offs // 5
    pos = offs - byte * 5
    value = tl.load(packed_ptr + byte, mask=mask, other=0).to(tl.int32)
    power = tl.where(pos == 0, 1, tl.where(pos == 1, 3, tl.where(pos == 2, 9, tl.where(pos == 3, 27, 81))))
    digit = (value // power) % 3
    tl.store(q_ptr + offs, (digit - 1).to(tl.int8), mask=mask)


def _interpreted() -> bool:
    return not isinstance(_ternary_quantize_kernel, triton.runtime.JITFunction)


def _check_device(t: torch.Tensor, what: str) -> None:
    if t.device.type == "cpu" and not _interpreted():
        raise ValueError(
            f"{what} got a CPU tensor, but Triton kernels run on a GPU; move it to the GPU, or, on a "
            "machine without one, set TRITON_INTERPRET=1 before kernels.threelc is imported"
        )


def _check_sparsity_multiplier(sparsity_multiplier: float) -> None:
    if not 1.0 <= sparsity_multiplier < 2.0:
        raise ValueError(
            f"sparsity_multiplier must be in [1, 2), got {sparsity_multiplier}: below 1 some |t/M| would "
            "exceed 1 and not be ternary; at 2 or above even the largest value would quantize to 0"
        )


def _check_float_tensor(t: torch.Tensor, what: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in _FLOAT_DTYPES:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{what} expects a float16, bfloat16 or float32 tensor, got {got}")


def _scale(abs_max: torch.Tensor, sparsity_multiplier: float) -> float:
    """``M = max|t| * s``, rounded once to fp32, shared by kernel and reference so both use one ``M``."""
    abs_max = abs_max.float().cpu().reshape(())
    if not torch.isfinite(abs_max):
        raise ValueError(
            "ternary_quantize: the tensor contains inf or NaN, so it has no meaningful 3LC scale; skip "
            "this step (or unscale/clip the gradients) before compressing"
        )
    s = torch.tensor(sparsity_multiplier, dtype=torch.float32)
    return float(abs_max * s)


def ternary_quantize(t: torch.Tensor, sparsity_multiplier: float = 1.0) -> tuple[torch.Tensor, float]:
    """3LC's ternary quantization: ``(q, M)`` with ``q`` int8 in ``{-1, 0, 1}`` (``t``'s shape) and ``t ~ q * M``.

    ``M = max|t| * sparsity_multiplier`` (rounded to fp32); ``q = sign(t)`` where ``|t| >= M / 2``,
    else 0 (round half away from zero, evaluated exactly: see the module docstring). All-zero and
    empty tensors give ``M = 0.0`` and all-zero ``q``. The scale is a Python float, so this call
    synchronizes with the GPU once (to read ``max|t|``).
    """
    _check_float_tensor(t, "ternary_quantize")
    _check_sparsity_multiplier(sparsity_multiplier)
    _check_device(t, "ternary_quantize")
    x = t.detach().contiguous().reshape(-1)
    n = x.numel()
    q = torch.empty(t.shape, dtype=torch.int8, device=t.device)
    if n == 0:
        return q, 0.0
    # Reduce max|t| with the same kernel until one value is left (1e6 elements: 977 partials, then 1).
    partial = x
    while True:
        grid = (triton.cdiv(partial.numel(), _BLOCK),)
        out = torch.empty(grid[0], dtype=torch.float32, device=t.device)
        _abs_max_kernel[grid](partial, out, partial.numel(), BLOCK=_BLOCK)
        partial = out
        if partial.numel() == 1:
            break
    scale = _scale(partial, sparsity_multiplier)
    _ternary_quantize_kernel[(triton.cdiv(n, _BLOCK),)](x, q.reshape(-1), scale, n, BLOCK=_BLOCK)
    return q, scale


def ternary_quantize_reference(t: torch.Tensor, sparsity_multiplier: float = 1.0) -> tuple[torch.Tensor, float]:
    """Torch version of ``ternary_quantize``, identical bit for bit (same ``M``, same exact rounding)."""
    _check_float_tensor(t, "ternary_quantize_reference")
    _check_sparsity_multiplier(sparsity_multiplier)
    if t.numel() == 0:
        return torch.empty(t.shape, dtype=torch.int8, device=t.device), 0.0
    x = t.detach().float()
    scale = _scale(x.abs().amax(), sparsity_multiplier)
    half = torch.tensor(scale, dtype=torch.float32) * 0.5
    q = torch.where(x.abs() >= half.to(x.device), torch.sign(x), torch.zeros_like(x))
    return q.to(torch.int8), scale


def ternary_dequantize(q: torch.Tensor, scale: float) -> torch.Tensor:
    """``q * scale`` as float32, ``q``'s shape: the decompressed gradient.

    Always float32, the dtype gradients are reduced in; cast the result if the model trains in
    fp16/bf16 (a cast inside the kernel would differ in the interpreter, whose bf16 cast truncates).
    """
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
        got = q.dtype if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"ternary_dequantize expects the int8 tensor from ternary_quantize, got {got}")
    _check_device(q, "ternary_dequantize")
    src = q.contiguous().reshape(-1)
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    n = src.numel()
    if n:
        _ternary_dequantize_kernel[(triton.cdiv(n, _BLOCK),)](src, out.reshape(-1), float(scale), n, BLOCK=_BLOCK)
    return out


def ternary_dequantize_reference(q: torch.Tensor, scale: float) -> torch.Tensor:
    """Torch version of ``ternary_dequantize``: the product in fp32 (exact: ``q`` is -1, 0 or 1)."""
    return q.float() * torch.tensor(scale, dtype=torch.float32, device=q.device)


def _check_ternary(q: torch.Tensor, what: str) -> None:
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
        got = q.dtype if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"{what} expects an int8 tensor of -1/0/1 (from ternary_quantize), got {got}")
    if q.numel() and bool(((q < -1) | (q > 1)).any()):
        raise ValueError(f"{what}: values outside {{-1, 0, 1}}; only ternary digits can be packed in base 3")


def pack_base3(q: torch.Tensor) -> torch.Tensor:
    """Pack ternary ``q`` (any shape, read flat) into ``ceil(n / 5)`` bytes, 5 digits per byte.

    Byte ``j`` is ``sum_{i<5} (q[5j + i] + 1) * 3**i`` (0..242); a short tail is padded with ``q = 0``.
    ``q``'s values are checked first (one extra read of ``q``), because a value outside -1..1 would
    silently corrupt its neighbours' digits.
    """
    _check_ternary(q, "pack_base3")
    _check_device(q, "pack_base3")
    src = q.contiguous().reshape(-1)
    n = src.numel()
    n_bytes = triton.cdiv(n, _DIGITS_PER_BYTE)
    out = torch.empty(n_bytes, dtype=torch.uint8, device=q.device)
    if n_bytes:
        _pack_base3_kernel[(triton.cdiv(n_bytes, _PACK_BLOCK),)](src, out, n, n_bytes, BLOCK=_PACK_BLOCK)
    return out


def pack_base3_reference(q: torch.Tensor) -> torch.Tensor:
    """Torch version of ``pack_base3``."""
    _check_ternary(q, "pack_base3_reference")
    digits = q.reshape(-1).to(torch.int32) + 1
    pad = (-digits.numel()) % _DIGITS_PER_BYTE
    digits = torch.cat([digits, torch.ones(pad, dtype=torch.int32, device=q.device)])
    powers = 3 ** torch.arange(_DIGITS_PER_BYTE, dtype=torch.int32, device=q.device)
    return (digits.reshape(-1, _DIGITS_PER_BYTE) * powers).sum(dim=1).to(torch.uint8)


def _check_packed(packed: torch.Tensor, n: int, what: str) -> None:
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"{what} expects the 1-D uint8 tensor from pack_base3, got {packed!r:.80}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"{what}: n must be a non-negative int (the number of packed values), got {n!r}")
    if packed.numel() != triton.cdiv(n, _DIGITS_PER_BYTE):
        raise ValueError(
            f"{what}: {packed.numel()} bytes cannot hold exactly n={n} values "
            f"(expected ceil(n / 5) = {triton.cdiv(n, _DIGITS_PER_BYTE)} bytes); pass the n used to pack"
        )
    if packed.numel() and bool((packed > _MAX_PACKED).any()):
        raise ValueError(f"{what}: bytes above {_MAX_PACKED} are not base-3^5 codes; the payload is corrupt")


def unpack_base3(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of ``pack_base3``: the first ``n`` ternary values, flat int8 (reshape to restore a shape)."""
    _check_packed(packed, n, "unpack_base3")
    _check_device(packed, "unpack_base3")
    out = torch.empty(n, dtype=torch.int8, device=packed.device)
    if n:
        _unpack_base3_kernel[(triton.cdiv(n, _BLOCK),)](packed, out, n, BLOCK=_BLOCK)
    return out


def unpack_base3_reference(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Torch version of ``unpack_base3``."""
    _check_packed(packed, n, "unpack_base3_reference")
    powers = 3 ** torch.arange(_DIGITS_PER_BYTE, dtype=torch.int32, device=packed.device)
    digits = (packed.to(torch.int32)[:, None] // powers) % 3
    return (digits.reshape(-1)[:n] - 1).to(torch.int8)

"""Element-wise ``x + y`` in Triton: the smallest kernel that shows the launch pattern.

Every other kernel here follows the same shape: a masked ``@triton.jit`` kernel, a host launcher
that checks its inputs and says what to do when they are wrong, and a plain torch reference that
the tests and ``bench/`` compare against (they import it from here, never a copy).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Elements per program. 1024 with 4 warps is the Triton tutorial's choice for this kernel
# (01-vector-add); nothing here measured it. Re-measure with bench/kernels.py on a GPU before
# changing it.
BLOCK_SIZE = 1024
NUM_WARPS = 4


# Dtypes both torch and Triton add the same way. Bool and complex are left out on purpose: torch's
# bool "+" is a logical or, and Triton has no complex type.
_SUPPORTED_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
)


@triton.jit
def _add_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr, UPCAST: tl.constexpr):
    # The last program usually runs past the end: the mask keeps any size correct.
    pid = tl.program_id(0).to(tl.int64)  # int64: pid * BLOCK_SIZE overflows int32 past 2**31 elements
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    if UPCAST:
        # fp16/bf16: add in fp32 and round once, as torch does (its "opmath" type), so results are
        # bitwise equal. It also keeps Triton's interpreter right: it stores bf16 as raw uint16 bits
        # and would add those as integers.
        out = (x.to(tl.float32) + y.to(tl.float32)).to(out_ptr.dtype.element_ty)
    else:
        out = x + y
    tl.store(out_ptr + offsets, out, mask=mask)


def _check_same(x: torch.Tensor, y: torch.Tensor, *, what: str) -> None:
    """Refuse mismatched operands up front: the kernel would read out of bounds or mix types silently."""
    if x.shape != y.shape:
        raise ValueError(
            f"{what}: shapes differ, {tuple(x.shape)} and {tuple(y.shape)}; broadcast or reshape before calling"
        )
    if x.dtype != y.dtype:
        raise TypeError(f"{what}: dtypes differ, {x.dtype} and {y.dtype}; cast one with .to() before calling")
    if x.device != y.device:
        raise ValueError(f"{what}: devices differ, {x.device} and {y.device}; move both to the same device")


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y`` computed by :func:`_add_kernel`.

    The kernel indexes flat memory, so non-contiguous inputs are copied to contiguous ones first;
    the result is a new contiguous tensor of the same shape and dtype. No broadcasting: operands
    of different shapes are an error rather than a guess.
    """
    _check_same(x, y, what="add")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"add: dtype {x.dtype} is not supported; use a floating type or a (u)int8-int64 type")
    x = x.contiguous()
    y = y.contiguous()
    out = torch.empty_like(x)
    n_elements = out.numel()
    if n_elements == 0:
        return out
    grid = (triton.cdiv(n_elements, BLOCK_SIZE),)
    upcast = x.dtype in (torch.float16, torch.bfloat16)
    _add_kernel[grid](x, y, out, n_elements, BLOCK_SIZE=BLOCK_SIZE, UPCAST=upcast, num_warps=NUM_WARPS)
    return out


def add_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """What :func:`add` must return: plain torch, the ground truth for tests and benchmarks."""
    return x + y

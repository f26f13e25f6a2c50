"""What the reference kernels share: row-kernel launch settings and operand checks.

Private to the reference kernels (never shipped into a job's sandbox, like them).
"""

from __future__ import annotations

import torch
import triton.language as tl

# The widest row a row kernel keeps whole in registers. 65536 is Liger-Kernel's MAX_FUSED_SIZE;
# past it the fused kernel spills heavily. Followed, not measured (no GPU yet): re-measure with
# bench/kernels.py on a GPU before raising it.
MAX_FUSED_SIZE = 65536

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_floating(x: torch.Tensor, *, what: str) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{what}: dtype {x.dtype} is not supported; use float16, bfloat16, float32 or float64")


def num_warps(block_size: int) -> int:
    """Warps for a row of ``block_size`` columns held in one block.

    Liger-Kernel's ``calculate_settings`` table (Triton's softmax tutorial uses the same steps up
    to 16): more columns per row, more threads to share them. Not measured here: re-measure with
    bench/kernels.py on a GPU.
    """
    if block_size >= 32768:
        return 32
    if block_size >= 8192:
        return 16
    if block_size >= 2048:
        return 8
    return 4


def acc_dtype(dtype: torch.dtype) -> tl.dtype:
    """fp32 accumulation for fp16/bf16/fp32; fp64 inputs keep fp64 (gradcheck needs it)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """View ``x`` as (rows, last dim) with unit column stride, copying only when a view cannot do it.

    Row strides are passed to the kernels, so a column slice of a wider buffer is read in place.
    """
    n_cols = x.shape[-1] if x.dim() > 0 else 1
    rows = x.reshape(-1, n_cols)
    if n_cols > 1 and rows.stride(1) != 1:
        rows = rows.contiguous()
    return rows


def check_matmul_operands(a: torch.Tensor, b: torch.Tensor, *, supported: tuple[torch.dtype, ...]) -> None:
    """Two 2-D tensors that can be multiplied: same dtype (one of ``supported``) and device."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError(f"matmul expects two tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"matmul expects 2-D tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"matmul: inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)} "
            "(a's columns must equal b's rows)"
        )
    if a.dtype != b.dtype:
        raise ValueError(f"matmul: dtypes differ ({a.dtype} and {b.dtype}); convert one of them first")
    if a.dtype not in supported:
        *rest, last = (str(d).removeprefix("torch.") for d in supported)
        names = f"{', '.join(rest)} and {last}" if rest else last
        raise ValueError(f"matmul supports {names}, got {a.dtype}")
    if a.device != b.device:
        raise ValueError(f"matmul: tensors are on different devices ({a.device} and {b.device})")

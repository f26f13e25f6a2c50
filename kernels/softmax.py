"""Row-wise softmax over the last dimension, forward and backward, in Triton.

Layout follows Liger-Kernel's ``ops/softmax.py`` and Triton's fused-softmax tutorial: one program
per row; a row that fits in one block (up to ``MAX_FUSED_SIZE`` columns) is read once, kept in
registers, and written once. Wider rows do not raise: they go to the looped kernels, which stream
the row in ``LOOPED_BLOCK_SIZE`` chunks with an online (running max, rescaled sum) softmax, at the
cost of reading the input twice.

Numerics, matching ``torch.softmax``:

* the row max is subtracted before ``exp``, so inputs shifted by +1000 neither overflow nor lose
  the result;
* ``-inf`` entries get probability 0, as long as the row has at least one finite entry;
* a row that is entirely ``-inf`` has no defined softmax; torch returns NaN for the whole row and
  so do these kernels (``-inf - -inf`` is NaN), in both the fused and the looped path. NaN rather
  than, say, a uniform row, so the caller sees that the row was empty instead of getting a
  plausible-looking but invented distribution;
* fp16 and bf16 inputs are computed in fp32 and rounded once on the store; fp64 stays fp64 so
  ``torch.autograd.gradcheck`` can check :class:`TritonSoftmax`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._shared import MAX_FUSED_SIZE, acc_dtype, as_rows, check_floating, num_warps

# Chunk width for rows wider than MAX_FUSED_SIZE, and its warps (Liger's calculate_settings table
# gives 8 warps from 2048 columns up). Unmeasured: re-measure with bench/kernels.py on a GPU.
LOOPED_BLOCK_SIZE = 4096
LOOPED_NUM_WARPS = 8


@triton.jit
def _softmax_forward_kernel(
    y_ptr,
    y_row_stride,
    x_ptr,
    x_row_stride,
    n_cols,
    BLOCK_SIZE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    # One program per row; BLOCK_SIZE >= n_cols, so the whole row is in registers.
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride overflows int32 on large tensors
    offs = tl.arange(0, BLOCK_SIZE)
    mask = offs < n_cols
    # Padding lanes load -inf so they neither win the max nor add to the sum (exp(-inf) == 0).
    x = tl.load(x_ptr + row * x_row_stride + offs, mask=mask, other=float("-inf")).to(ACC_DTYPE)
    # An all -inf row gives row_max == -inf and x - row_max == NaN everywhere: NaN out, as torch.
    row_max = tl.max(x, axis=0)
    numerator = tl.exp(x - row_max)
    denominator = tl.sum(numerator, axis=0)
    y = numerator / denominator
    tl.store(y_ptr + row * y_row_stride + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_forward_looped_kernel(
    y_ptr,
    y_row_stride,
    x_ptr,
    x_row_stride,
    n_cols,
    BLOCK_SIZE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    # Rows wider than one block: pass 1 keeps a running max m and the sum d of exp(x - m),
    # rescaling d whenever m grows (online softmax); pass 2 writes exp(x - m) / d.
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_row_stride
    y_row = y_ptr + row * y_row_stride
    offs = tl.arange(0, BLOCK_SIZE)

    m = tl.full([], float("-inf"), ACC_DTYPE)
    d = tl.zeros([], ACC_DTYPE)
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + offs
        x = tl.load(x_row + cols, mask=cols < n_cols, other=float("-inf")).to(ACC_DTYPE)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        # While every entry so far is -inf, m_new is -inf and exp(x - m_new) would be NaN, poisoning
        # d for good even if a later block is finite. Shift by 0 instead: every term is exp(-inf) == 0.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        d = d * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), axis=0)
        m = m_new

    # An all -inf row ends with m == -inf and d == 0: exp(-inf - -inf) / 0 is NaN, as torch.
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + offs
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=float("-inf")).to(ACC_DTYPE)
        y = tl.exp(x - m) / d
        tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_backward_kernel(
    dx_ptr,
    dx_row_stride,
    y_ptr,
    y_row_stride,
    dy_ptr,
    dy_row_stride,
    n_cols,
    BLOCK_SIZE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    # dx = y * (dy - sum(dy * y)): the softmax Jacobian applied to dy without forming it.
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_SIZE)
    mask = offs < n_cols
    y = tl.load(y_ptr + row * y_row_stride + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    dy = tl.load(dy_ptr + row * dy_row_stride + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    dot = tl.sum(dy * y, axis=0)
    dx = y * (dy - dot)
    tl.store(dx_ptr + row * dx_row_stride + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_backward_looped_kernel(
    dx_ptr,
    dx_row_stride,
    y_ptr,
    y_row_stride,
    dy_ptr,
    dy_row_stride,
    n_cols,
    BLOCK_SIZE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    # Pass 1 accumulates sum(dy * y) per lane (reduced once at the end); pass 2 writes dx.
    row = tl.program_id(0).to(tl.int64)
    y_row = y_ptr + row * y_row_stride
    dy_row = dy_ptr + row * dy_row_stride
    dx_row = dx_ptr + row * dx_row_stride
    offs = tl.arange(0, BLOCK_SIZE)

    acc = tl.zeros([BLOCK_SIZE], ACC_DTYPE)
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + offs
        mask = cols < n_cols
        y = tl.load(y_row + cols, mask=mask, other=0.0).to(ACC_DTYPE)
        dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(ACC_DTYPE)
        acc += dy * y
    dot = tl.sum(acc, axis=0)

    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + offs
        mask = cols < n_cols
        y = tl.load(y_row + cols, mask=mask, other=0.0).to(ACC_DTYPE)
        dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(ACC_DTYPE)
        tl.store(dx_row + cols, (y * (dy - dot)).to(dx_ptr.dtype.element_ty), mask=mask)


def _launch_settings(n_cols: int) -> tuple[bool, int, int]:
    """(looped?, BLOCK_SIZE, num_warps) for a row of ``n_cols`` columns."""
    if n_cols > MAX_FUSED_SIZE:
        return True, LOOPED_BLOCK_SIZE, LOOPED_NUM_WARPS
    block_size = triton.next_power_of_2(n_cols)
    return False, block_size, num_warps(block_size)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension of ``x`` (any leading dims), in ``x``'s dtype.

    Rows of any width work: up to ``MAX_FUSED_SIZE`` columns in one block, wider ones through the
    looped online-softmax kernel. A row that is entirely ``-inf`` comes back as NaN, as in torch.
    """
    check_floating(x, what="softmax")
    if x.numel() == 0:
        return torch.empty_like(x)
    x_rows = as_rows(x)
    n_rows, n_cols = x_rows.shape
    y_rows = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    looped, block_size, num_warps = _launch_settings(n_cols)
    kernel = _softmax_forward_looped_kernel if looped else _softmax_forward_kernel
    kernel[(n_rows,)](
        y_rows,
        y_rows.stride(0),
        x_rows,
        x_rows.stride(0),
        n_cols,
        BLOCK_SIZE=block_size,
        ACC_DTYPE=acc_dtype(x.dtype),
        num_warps=num_warps,
    )
    return y_rows.view(x.shape)


def softmax_backward(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Gradient of the softmax input, given its output ``y`` and the output gradient ``dy``.

    Takes ``y`` rather than ``x`` because that is what the forward keeps: ``dx = y * (dy - sum(dy * y))``
    needs no ``exp``. Same shape, dtype and device for both, or a clear error.
    """
    check_floating(y, what="softmax_backward")
    if y.shape != dy.shape:
        raise ValueError(
            f"softmax_backward: y has shape {tuple(y.shape)} but dy has {tuple(dy.shape)}; they must match"
        )
    if y.dtype != dy.dtype:
        raise TypeError(f"softmax_backward: y is {y.dtype} but dy is {dy.dtype}; cast dy with .to(y.dtype)")
    if y.device != dy.device:
        raise ValueError(f"softmax_backward: y is on {y.device} but dy on {dy.device}; move both to one device")
    if y.numel() == 0:
        return torch.empty_like(y)
    y_rows = as_rows(y)
    # dy is often an expanded view (stride 0), e.g. the gradient of .sum(): _as_rows copies it then.
    dy_rows = as_rows(dy)
    n_rows, n_cols = y_rows.shape
    dx_rows = torch.empty((n_rows, n_cols), dtype=y.dtype, device=y.device)
    looped, block_size, num_warps = _launch_settings(n_cols)
    kernel = _softmax_backward_looped_kernel if looped else _softmax_backward_kernel
    kernel[(n_rows,)](
        dx_rows,
        dx_rows.stride(0),
        y_rows,
        y_rows.stride(0),
        dy_rows,
        dy_rows.stride(0),
        n_cols,
        BLOCK_SIZE=block_size,
        ACC_DTYPE=acc_dtype(y.dtype),
        num_warps=num_warps,
    )
    return dx_rows.view(y.shape)


class TritonSoftmax(torch.autograd.Function):
    """``softmax`` with its Triton backward, for use inside autograd: ``TritonSoftmax.apply(x)``.

    Saves the output, not the input: the backward needs only ``y``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = softmax(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return softmax_backward(y, dy)


def _is_half(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16)


def softmax_reference(x: torch.Tensor) -> torch.Tensor:
    """What :func:`softmax` must return: torch, in fp32 for half types then cast back (as the kernel)."""
    if _is_half(x.dtype):
        return torch.softmax(x.float(), dim=-1).to(x.dtype)
    return torch.softmax(x, dim=-1)


def softmax_backward_reference(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """What :func:`softmax_backward` must return, in torch (fp32 for half types, as the kernel)."""
    if _is_half(y.dtype):
        y32, dy32 = y.float(), dy.float()
        return (y32 * (dy32 - (dy32 * y32).sum(dim=-1, keepdim=True))).to(y.dtype)
    return y * (dy - (dy * y).sum(dim=-1, keepdim=True))

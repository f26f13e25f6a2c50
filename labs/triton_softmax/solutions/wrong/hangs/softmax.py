"""Row-wise softmax in Triton, every row streamed in chunks of CHUNK columns (online softmax).

The forward kernel's first loop never advances its chunk offset: it spins on the first chunk
forever, so the first call hangs the job.
"""

import torch
import triton
import triton.language as tl

FUSED_MAX_COLS = 0  # no row is kept whole: all are streamed
CHUNK = 1024  # chunk of the streamed kernels


@triton.jit
def _softmax_forward_kernel(y_ptr, y_row_stride, x_ptr, x_row_stride, n_cols, BLOCK_SIZE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols
    # Padding lanes load -inf: they never win the max and exp(-inf) adds 0 to the sum.
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=float("-inf")).to(tl.float32)
    numerator = tl.exp(x - tl.max(x, axis=0))
    y = numerator / tl.sum(numerator, axis=0)
    tl.store(y_ptr + row * y_row_stride + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_forward_streamed_kernel(y_ptr, y_row_stride, x_ptr, x_row_stride, n_cols, BLOCK_SIZE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_row_stride
    y_row = y_ptr + row * y_row_stride
    cols = tl.arange(0, BLOCK_SIZE)
    running_max = tl.full([], float("-inf"), tl.float32)
    running_sum = tl.zeros([], tl.float32)
    start = 0
    while start < n_cols:
        x = tl.load(x_row + start + cols, mask=start + cols < n_cols, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(x - shift), axis=0)
        running_max = new_max
        # forgot: start += BLOCK_SIZE
    for start in range(0, n_cols, BLOCK_SIZE):
        mask = start + cols < n_cols
        x = tl.load(x_row + start + cols, mask=mask, other=float("-inf")).to(tl.float32)
        y = tl.exp(x - running_max) / running_sum
        tl.store(y_row + start + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_backward_kernel(
    dx_ptr, dx_row_stride, y_ptr, y_row_stride, dy_ptr, dy_row_stride, n_cols, BLOCK_SIZE: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    y_row = y_ptr + row * y_row_stride
    dy_row = dy_ptr + row * dy_row_stride
    dx_row = dx_ptr + row * dx_row_stride
    cols = tl.arange(0, BLOCK_SIZE)
    # sum(y * dy) over the row, chunk by chunk (one chunk when BLOCK_SIZE >= n_cols).
    acc = tl.zeros([BLOCK_SIZE], tl.float32)
    for start in range(0, n_cols, BLOCK_SIZE):
        mask = start + cols < n_cols
        y = tl.load(y_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        acc += y * dy
    dot = tl.sum(acc, axis=0)
    for start in range(0, n_cols, BLOCK_SIZE):
        mask = start + cols < n_cols
        y = tl.load(y_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_row + start + cols, (y * (dy - dot)).to(dx_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as (rows, n_cols) with unit column stride; the row stride goes to the kernel."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(1) == 1 else rows.contiguous()


def _block_and_warps(n_cols: int) -> tuple[int, int]:
    block = triton.next_power_of_2(n_cols) if n_cols <= FUSED_MAX_COLS else CHUNK
    return block, 4 if block < 2048 else 8 if block < 8192 else 16


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax of ``x`` over its last dimension, same shape and dtype, computed by a Triton kernel."""
    if x.dim() == 0 or x.numel() == 0:
        return torch.ones_like(x) if x.dim() == 0 else torch.empty_like(x)
    x_rows = _rows(x)
    n_rows, n_cols = x_rows.shape
    y = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    block, warps = _block_and_warps(n_cols)
    kernel = _softmax_forward_kernel if n_cols <= FUSED_MAX_COLS else _softmax_forward_streamed_kernel
    kernel[(n_rows,)](y, y.stride(0), x_rows, x_rows.stride(0), n_cols, BLOCK_SIZE=block, num_warps=warps)
    return y.view(x.shape)


def softmax_backward(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """The gradient of softmax's input, given its output ``y`` and the output's gradient ``dy``."""
    if y.shape != dy.shape:
        raise ValueError(f"softmax_backward: y is {tuple(y.shape)} but dy is {tuple(dy.shape)}")
    if y.dim() == 0 or y.numel() == 0:
        return torch.zeros_like(y)
    y_rows, dy_rows = _rows(y), _rows(dy.to(y.dtype))
    n_rows, n_cols = y_rows.shape
    dx = torch.empty((n_rows, n_cols), dtype=y.dtype, device=y.device)
    block, warps = _block_and_warps(n_cols)
    _softmax_backward_kernel[(n_rows,)](
        dx,
        dx.stride(0),
        y_rows,
        y_rows.stride(0),
        dy_rows,
        dy_rows.stride(0),
        n_cols,
        BLOCK_SIZE=block,
        num_warps=warps,
    )
    return dx.view(y.shape)


class TritonSoftmax(torch.autograd.Function):
    """softmax with a Triton backward, usable in autograd: ``y = TritonSoftmax.apply(x)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = softmax(x)
        ctx.save_for_backward(y)  # the backward needs y only, not x
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return softmax_backward(y, dy)

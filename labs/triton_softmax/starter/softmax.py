"""Row-wise softmax in Triton: forward, backward and an autograd Function. Edit this file and submit it.

softmax(x) normalises over the last dimension; every leading dimension is a row. Write one
@triton.jit kernel for the forward (one program per row is a good start) and one for the
backward, the host functions that launch them, and TritonSoftmax, which plugs both into autograd.
See README.md for what is graded.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _softmax_forward_kernel(y_ptr, x_ptr, x_row_stride, y_row_stride, n_cols, BLOCK_SIZE: tl.constexpr):
    # TODO: this program's row; load it (lanes past n_cols load -inf), subtract the row max,
    # exponentiate, divide by the sum, store (masked).
    pass


@triton.jit
def _softmax_backward_kernel(dx_ptr, y_ptr, dy_ptr, n_cols, BLOCK_SIZE: tl.constexpr):
    # TODO: dx = y * (dy - sum(y * dy)) over this program's row.
    pass


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax of ``x`` over its last dimension, same shape and dtype, computed by a Triton kernel."""
    raise NotImplementedError(
        "softmax(x): view x as (rows, n_cols), allocate the output and launch _softmax_forward_kernel "
        "with one program per row and BLOCK_SIZE = triton.next_power_of_2(n_cols)"
    )


def softmax_backward(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """The gradient of softmax's input, given its output ``y`` and the output's gradient ``dy``."""
    raise NotImplementedError(
        "softmax_backward(y, dy): launch _softmax_backward_kernel to compute y * (dy - sum(y * dy)) per row"
    )


class TritonSoftmax(torch.autograd.Function):
    """softmax with a Triton backward, usable in autograd: ``y = TritonSoftmax.apply(x)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("TritonSoftmax.forward: compute y = softmax(x) and save y for the backward")

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("TritonSoftmax.backward: return softmax_backward(y, dy) with the saved y")

"""Layer norm over the last dimension, forward only, in Triton.

One program per row, the whole row held in registers (Liger-Kernel's ``ops/layer_norm.py``
layout): mean, then variance from the centred values (two passes over registers, not
``E[x^2] - E[x]^2``, which cancels catastrophically when the mean is large), then scale and shift.
fp16 and bf16 are computed in fp32 and rounded once on the store; fp64 stays fp64.

Rows wider than ``MAX_FUSED_SIZE`` columns raise ``ValueError`` instead of looping: hidden sizes
in practice are far narrower, and a clear refusal beats a slow path nobody has measured.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._shared import MAX_FUSED_SIZE, acc_dtype, as_rows, check_floating, num_warps


@triton.jit
def _layer_norm_forward_kernel(
    y_ptr,
    y_row_stride,
    x_ptr,
    x_row_stride,
    weight_ptr,
    bias_ptr,
    n_cols,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride overflows int32 on large tensors
    offs = tl.arange(0, BLOCK_SIZE)
    mask = offs < n_cols
    x = tl.load(x_ptr + row * x_row_stride + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    mean = tl.sum(x, axis=0) / n_cols
    # Padding lanes would contribute (0 - mean)^2 to the variance: zero them after centring.
    centred = tl.where(mask, x - mean, 0.0)
    var = tl.sum(centred * centred, axis=0) / n_cols  # biased, as torch's layer_norm
    rstd = 1.0 / tl.sqrt(var + eps)
    y = centred * rstd
    # HAS_WEIGHT / HAS_BIAS are constexpr: the branch not taken is not compiled, and the dummy
    # pointer passed for a missing tensor is never read.
    if HAS_WEIGHT:
        y = y * tl.load(weight_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    tl.store(y_ptr + row * y_row_stride + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _check_affine(param: torch.Tensor | None, x: torch.Tensor, *, name: str) -> torch.Tensor | None:
    """``weight``/``bias`` must be 1-D over the last dim, in ``x``'s dtype and on its device (as torch requires)."""
    if param is None:
        return None
    n_cols = x.shape[-1]
    if param.shape != (n_cols,):
        raise ValueError(
            f"layer_norm: {name} has shape {tuple(param.shape)}, expected ({n_cols},) to match the last dim of x"
        )
    if param.dtype != x.dtype:
        raise TypeError(f"layer_norm: {name} is {param.dtype} but x is {x.dtype}; cast it with .to(x.dtype)")
    if param.device != x.device:
        raise ValueError(f"layer_norm: {name} is on {param.device} but x on {x.device}; move it to x's device")
    return param.contiguous()


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Layer norm of ``x`` over its last dimension, like ``F.layer_norm(x, x.shape[-1:], weight, bias, eps)``.

    ``weight`` and ``bias`` may each be None (no scale, no shift). The result has ``x``'s shape and
    dtype. Raises ``ValueError`` for rows wider than ``MAX_FUSED_SIZE`` (see the module docstring).
    """
    check_floating(x, what="layer_norm")
    if x.dim() == 0:
        raise ValueError("layer_norm: x is a 0-d tensor; it needs a last dimension to normalize over")
    weight = _check_affine(weight, x, name="weight")
    bias = _check_affine(bias, x, name="bias")
    n_cols = x.shape[-1]
    if n_cols > MAX_FUSED_SIZE:
        raise ValueError(
            f"layer_norm: rows of {n_cols} columns are wider than the {MAX_FUSED_SIZE} this kernel holds in one "
            "block; use torch.nn.functional.layer_norm for such rows"
        )
    if x.numel() == 0:
        return torch.empty_like(x)
    x_rows = as_rows(x)
    n_rows = x_rows.shape[0]
    y_rows = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    block_size = triton.next_power_of_2(n_cols)
    _layer_norm_forward_kernel[(n_rows,)](
        y_rows,
        y_rows.stride(0),
        x_rows,
        x_rows.stride(0),
        # A missing weight/bias still needs a pointer argument; x is one, and the kernel never reads it.
        weight if weight is not None else x_rows,
        bias if bias is not None else x_rows,
        n_cols,
        eps,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        BLOCK_SIZE=block_size,
        ACC_DTYPE=acc_dtype(x.dtype),
        num_warps=num_warps(block_size),
    )
    return y_rows.view(x.shape)


def layer_norm_reference(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """What :func:`layer_norm` must return: torch's, in fp32 for half types then cast back (as the kernel)."""
    shape = x.shape[-1:]
    if x.dtype in (torch.float16, torch.bfloat16):
        w = weight.float() if weight is not None else None
        b = bias.float() if bias is not None else None
        return torch.nn.functional.layer_norm(x.float(), shape, w, b, eps).to(x.dtype)
    return torch.nn.functional.layer_norm(x, shape, weight, bias, eps)

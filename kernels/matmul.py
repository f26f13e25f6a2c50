"""Triton matmul for fp16/bf16 (and fp32), after Triton's matmul tutorial (03-matrix-multiplication).

Each program computes one ``BLOCK_M x BLOCK_N`` tile of ``c`` by walking ``K`` in ``BLOCK_K`` steps
with an fp32 accumulator; the result is cast back to the input dtype, as ``torch.matmul`` returns it.
Programs are ordered in groups of ``GROUP_M`` tile rows ("swizzle") so that programs running at the
same time share tiles of ``a`` and ``b`` in L2. Any ``M, N, K`` works: row and column offsets wrap
(``% M``, ``% N``) so loads stay in bounds without masks, the ``K`` tail is masked to zero, and the
store is masked.

Two launches of the one ``@triton.jit`` kernel:

* on a GPU, ``_matmul_autotuned`` picks the fastest of a few configs per ``(M, N, K, dtype)``;
  autotuning times every config with CUDA events;
* in Triton's interpreter (``TRITON_INTERPRET=1``, how this runs on machines without a GPU) there is
  nothing to time, so a fixed small config is launched directly. The interpreter also computes
  ``tl.dot`` of bfloat16 wrongly (it keeps bf16 as raw uint16 bits and multiplies those as
  integers), so there bf16 tiles are converted to fp32 before the dot; on a GPU the native bf16 dot
  runs. One more interpreter difference: its fp32 -> bf16 cast truncates instead of rounding to
  nearest even, so interpreted bf16 results can be one bf16 ulp off the GPU's.

fp32 inputs use ``input_precision="ieee"`` so they match ``torch.matmul`` in fp32 to rounding; with
Triton's default (TF32 on NVIDIA) they would lose ~3 decimal digits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._shared import check_matmul_operands

__all__ = ["INTERPRETED", "matmul", "matmul_reference"]

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# The configs of Triton's matmul tutorial for CUDA GPUs (fp16 inputs), not measured here: re-measure
# with bench/kernels.py on the target GPU and keep the winners. Configs that do not fit a GPU's shared
# memory (the 128x256x64 one with fp32 inputs, say) are skipped by the autotuner, not an error.
_AUTOTUNE_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 32, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8}, num_stages=5, num_warps=2),
]

# The interpreter's config: 32 is small enough that the test shapes (72x73x74, 128^3) span several
# tiles in every dimension, so the wrap-around, the K mask and the store mask all run; GROUP_M=2 makes
# the last group of tile rows partial for M=72 (3 tile rows). Speed is irrelevant in the interpreter.
_INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}


@triton.jit
def _matmul_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    IEEE_FP32: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    # Grouped ("swizzled") order of the output tiles: GROUP_M tile rows are finished column by column
    # before moving on, so concurrently running programs reuse the same a rows and b columns from L2.
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    # Rows of a and columns of b past the edge wrap around (% M, % N): those loads are in bounds and
    # only feed outputs that the masked store drops, so the loads need no mask and stay vectorized.
    offs_am = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    offs_bn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + (offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak)
    b_ptrs = b_ptr + (offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        # The K tail is loaded as zeros, which add nothing to the dot product.
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if DOT_IN_FP32:
            # Only in the interpreter, whose bf16 dot is wrong (see the module docstring).
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE_FP32:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    c = acc.to(c_ptr.dtype.element_ty)
    offs_cm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ptrs = c_ptr + stride_cm * offs_cm[:, None] + stride_cn * offs_cn[None, :]
    tl.store(c_ptrs, c, mask=(offs_cm[:, None] < M) & (offs_cn[None, :] < N))


_matmul_autotuned = triton.autotune(configs=_AUTOTUNE_CONFIGS, key=["M", "N", "K"])(_matmul_kernel)

# Whether the kernel was defined under TRITON_INTERPRET=1. Triton reads the variable when the
# @triton.jit decorator runs, so this, not the environment now, says how the kernel will execute.
INTERPRETED: bool = not isinstance(_matmul_kernel, triton.runtime.JITFunction)


def _check_operands(a: torch.Tensor, b: torch.Tensor) -> None:
    check_matmul_operands(a, b, supported=_SUPPORTED_DTYPES)
    if a.device.type == "cpu" and not INTERPRETED:
        raise ValueError(
            "matmul got CPU tensors, but Triton kernels run on a GPU; move them to the GPU, or, on a "
            "machine without one, set TRITON_INTERPRET=1 before kernels.matmul is imported"
        )
    # Offsets are computed in int32 inside the kernel.
    if max(a.numel(), b.numel(), a.shape[0] * b.shape[1]) >= 2**31:
        raise ValueError("matmul: operands or result with 2**31 or more elements are not supported")


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D fp16/bf16/fp32 tensors with fp32 accumulation, returned in the input dtype.

    On a GPU the block sizes are autotuned per ``(M, N, K, dtype)`` (the first call for a new shape
    is slow: it benchmarks every config). Under ``TRITON_INTERPRET=1`` (no GPU) one fixed small
    config runs instead, because the autotuner's CUDA timing cannot run in the interpreter. Inputs
    may be non-contiguous (strides are passed through). Not differentiable.
    """
    _check_operands(a, b)
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    if M == 0 or N == 0:
        return c
    if K == 0:
        return c.zero_()
    common = {
        "IEEE_FP32": a.dtype == torch.float32,
        "DOT_IN_FP32": INTERPRETED and a.dtype == torch.bfloat16,
    }
    args = (a, b, c, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1))
    if INTERPRETED:
        cfg = _INTERPRETER_CONFIG
        grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
        _matmul_kernel[grid](*args, **cfg, **common)
    else:

        def grid(meta: dict) -> tuple[int]:
            return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

        _matmul_autotuned[grid](*args, **common)
    return c


def matmul_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul`` computed in fp32 and cast to the input dtype: what the kernel should return.

    Computing in fp32 (rather than torch's fp16 matmul, whose accumulation differs by backend) gives
    the tests and ``bench/`` one well-defined target for every dtype and device.
    """
    return torch.matmul(a.float(), b.float()).to(a.dtype)

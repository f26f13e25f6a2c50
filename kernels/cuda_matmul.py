"""Tiled matmul as a C++/CUDA extension built with ``torch.utils.cpp_extension.load_inline``.

This is the reference for the ``cuda_matmul`` lab (MS AI-System Lab 3, CMU DLSys hw3), so it has
exactly the lab's interface: the module-level source strings ``CPP_SRC`` and ``CUDA_SRC``, a
``matmul(a, b)`` that dispatches on the tensors' device, and ``MatmulLinearFunction``, whose forward
and both backward products go through that same ``matmul``.

Two kernels, one per device:

* CUDA: the classic shared-memory tiling. A block stages a ``TILE x TILE`` tile of ``a`` and of
  ``b`` in shared memory, so each global element is read ``N / TILE`` (resp. ``M / TILE``) times
  instead of ``N`` (``M``) times, and each thread accumulates ``ROWS_PER_THREAD`` outputs of one
  column in registers (thread coarsening: the ``b`` value read from shared memory is reused for
  every row).
* CPU: the same idea for caches: loops blocked over rows, ``k`` and columns so that a block of ``b``
  stays in L1/L2 while it is reused, with an ``i-k-j`` inner order whose innermost loop runs over
  contiguous memory and vectorizes. It exists so that the lab (and this module) is testable on
  machines without a GPU; it runs on one thread, deterministically.

The extension is compiled on first use, not at import, because compiling takes tens of seconds
and most importers (the portal, the grader's trusted side) never call it. The names are stable so
that torch's extension cache (``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``)
reuses an earlier build: a CPU-only build and a CUDA build get different names so that a cache
shared between a CPU and a GPU worker does not rebuild back and forth. On a machine without CUDA
only the C++ part is compiled (no ``nvcc`` needed).
"""

from __future__ import annotations

import threading
from types import ModuleType

import torch

from kernels._shared import check_matmul_operands

__all__ = ["CPP_SRC", "CUDA_SRC", "MatmulLinearFunction", "matmul", "matmul_reference"]

# C++ (host) part: the cache-tiled CPU kernel, and the declaration of the CUDA entry point that
# CUDA_SRC defines. load_inline prepends ``#include <torch/extension.h>`` and generates the Python
# bindings for the names it is given, so on a CPU-only build the unused declaration is harmless.
CPP_SRC = r"""
#include <algorithm>

// Block sizes of the CPU loop nest. Chosen by cache arithmetic, not measured here: a 64 x 256
// float block of b is 64 KiB (fits L2 on anything current) and a row segment of c of 256 floats is
// 1 KiB (stays in L1). Re-measure with bench/kernels.py before relying on CPU timings.
constexpr int64_t CPU_BLOCK_M = 64;
constexpr int64_t CPU_BLOCK_N = 256;
constexpr int64_t CPU_BLOCK_K = 64;

template <typename scalar_t>
static void matmul_cpu_blocked(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                               scalar_t* __restrict__ c, int64_t M, int64_t N, int64_t K) {
  // c must be zero on entry. For every c[i][j] the k's are summed in increasing order, so the
  // result does not depend on the block sizes' effect on the schedule, only on the data.
  for (int64_t i0 = 0; i0 < M; i0 += CPU_BLOCK_M) {
    const int64_t i1 = std::min(M, i0 + CPU_BLOCK_M);
    for (int64_t k0 = 0; k0 < K; k0 += CPU_BLOCK_K) {
      const int64_t k1 = std::min(K, k0 + CPU_BLOCK_K);
      for (int64_t j0 = 0; j0 < N; j0 += CPU_BLOCK_N) {
        const int64_t j1 = std::min(N, j0 + CPU_BLOCK_N);
        for (int64_t i = i0; i < i1; ++i) {
          scalar_t* __restrict__ c_row = c + i * N;
          for (int64_t k = k0; k < k1; ++k) {
            const scalar_t a_ik = a[i * K + k];
            const scalar_t* __restrict__ b_row = b + k * N;
            for (int64_t j = j0; j < j1; ++j) {
              c_row[j] += a_ik * b_row[j];
            }
          }
        }
      }
    }
  }
}

static void check_operands(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "matmul expects 2-D tensors, got ", a.dim(), "-D and ",
              b.dim(), "-D");
  TORCH_CHECK(a.size(1) == b.size(0), "matmul: inner dimensions differ: a is ", a.sizes(),
              ", b is ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "matmul: dtypes differ: ", a.scalar_type(),
              " and ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), "matmul: devices differ: ", a.device(), " and ",
              b.device());
}

torch::Tensor matmul_cpu(const torch::Tensor& a_in, const torch::Tensor& b_in) {
  check_operands(a_in, b_in);
  TORCH_CHECK(a_in.device().is_cpu(), "matmul_cpu expects CPU tensors, got ", a_in.device());
  const torch::Tensor a = a_in.contiguous();
  const torch::Tensor b = b_in.contiguous();
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  torch::Tensor c = torch::zeros({M, N}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "matmul_cpu", [&] {
    matmul_cpu_blocked<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                                 c.data_ptr<scalar_t>(), M, N, K);
  });
  return c;
}

torch::Tensor matmul_cuda(const torch::Tensor& a, const torch::Tensor& b);
"""

# CUDA part: the shared-memory tiled kernel and its launcher.
CUDA_SRC = r"""
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

// TILE 32 with 4 rows per thread (blocks of 32 x 8 = 256 threads) is the textbook starting point
// (Kirk & Hwu, "Programming Massively Parallel Processors", ch. 5-6): 32 makes a warp read one
// 128-byte row of a tile, coalesced; coarsening reuses each b value from shared memory 4 times.
// Not measured here (no GPU): re-measure with bench/kernels.py on a GPU before tuning.
constexpr int TILE = 32;
constexpr int ROWS_PER_THREAD = 4;
constexpr int BLOCK_ROWS = TILE / ROWS_PER_THREAD;

template <typename scalar_t>
__global__ void matmul_tiled_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                    scalar_t* __restrict__ c, int64_t M, int64_t N, int64_t K) {
  __shared__ scalar_t a_tile[TILE][TILE];
  __shared__ scalar_t b_tile[TILE][TILE];

  const int tx = threadIdx.x;  // column inside the tile, 0..TILE-1
  const int ty = threadIdx.y;  // first row inside the tile, 0..BLOCK_ROWS-1
  const int64_t col = static_cast<int64_t>(blockIdx.x) * TILE + tx;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * TILE;

  scalar_t acc[ROWS_PER_THREAD];
#pragma unroll
  for (int r = 0; r < ROWS_PER_THREAD; ++r) acc[r] = scalar_t(0);

  for (int64_t k0 = 0; k0 < K; k0 += TILE) {
    // Stage both tiles; out-of-range elements (ragged edges of M, N, K) are loaded as zero so the
    // inner product needs no bounds checks.
#pragma unroll
    for (int r = 0; r < ROWS_PER_THREAD; ++r) {
      const int tr = ty + r * BLOCK_ROWS;
      const int64_t a_row = row0 + tr;
      const int64_t a_col = k0 + tx;
      a_tile[tr][tx] = (a_row < M && a_col < K) ? a[a_row * K + a_col] : scalar_t(0);
      const int64_t b_row = k0 + tr;
      b_tile[tr][tx] = (b_row < K && col < N) ? b[b_row * N + col] : scalar_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < TILE; ++k) {
      const scalar_t b_kj = b_tile[k][tx];  // consecutive tx: consecutive banks
#pragma unroll
      for (int r = 0; r < ROWS_PER_THREAD; ++r) {
        acc[r] += a_tile[ty + r * BLOCK_ROWS][k] * b_kj;  // same address in a warp: broadcast
      }
    }
    __syncthreads();  // the next iteration overwrites the tiles
  }

#pragma unroll
  for (int r = 0; r < ROWS_PER_THREAD; ++r) {
    const int64_t row = row0 + ty + r * BLOCK_ROWS;
    if (row < M && col < N) c[row * N + col] = acc[r];
  }
}

torch::Tensor matmul_cuda(const torch::Tensor& a_in, const torch::Tensor& b_in) {
  TORCH_CHECK(a_in.dim() == 2 && b_in.dim() == 2, "matmul expects 2-D tensors");
  TORCH_CHECK(a_in.size(1) == b_in.size(0), "matmul: inner dimensions differ: a is ",
              a_in.sizes(), ", b is ", b_in.sizes());
  TORCH_CHECK(a_in.scalar_type() == b_in.scalar_type(), "matmul: dtypes differ");
  TORCH_CHECK(a_in.is_cuda() && b_in.device() == a_in.device(),
              "matmul_cuda expects both tensors on the same CUDA device");
  const c10::cuda::CUDAGuard guard(a_in.device());
  const torch::Tensor a = a_in.contiguous();
  const torch::Tensor b = b_in.contiguous();
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  torch::Tensor c = torch::empty({M, N}, a.options());
  if (M == 0 || N == 0) return c;  // a zero-sized grid is an invalid launch
  const int64_t grid_y = (M + TILE - 1) / TILE;
  TORCH_CHECK(grid_y <= 65535, "matmul_cuda: M = ", M, " needs more than 65535 row tiles");
  const dim3 block(TILE, BLOCK_ROWS);
  const dim3 grid(static_cast<unsigned>((N + TILE - 1) / TILE), static_cast<unsigned>(grid_y));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "matmul_cuda", [&] {
    matmul_tiled_kernel<scalar_t><<<grid, block, 0, stream>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), M, N, K);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return c;
}
"""

# Stable names, one per build flavour (see the module docstring). Bump the suffix only to force
# every worker to rebuild; torch already rebuilds when the sources or flags change.
_EXTENSION_NAME_CPU = "aisys_kernels_cuda_matmul_cpu"
_EXTENSION_NAME_CUDA = "aisys_kernels_cuda_matmul_cuda"
_SUPPORTED_DTYPES = (torch.float32, torch.float64)

_extension: ModuleType | None = None
_extension_lock = threading.Lock()


def _load_extension() -> ModuleType:
    """Compile (first call) or load from torch's extension cache, once per process.

    The lock matters when several threads call ``matmul`` for the first time: torch's own file
    lock serialises processes, but two threads of one process would both start ``load_inline``.
    """
    global _extension
    if _extension is not None:
        return _extension
    with _extension_lock:
        if _extension is not None:
            return _extension
        from torch.utils.cpp_extension import load_inline

        with_cuda = torch.cuda.is_available()
        try:
            _extension = load_inline(
                name=_EXTENSION_NAME_CUDA if with_cuda else _EXTENSION_NAME_CPU,
                cpp_sources=CPP_SRC,
                cuda_sources=CUDA_SRC if with_cuda else None,
                functions=["matmul_cpu", "matmul_cuda"] if with_cuda else ["matmul_cpu"],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3"] if with_cuda else None,
                verbose=False,
            )
        except (RuntimeError, OSError, ImportError) as exc:
            needs = "a C++ compiler, ninja" + (" and nvcc (the CUDA toolkit)" if with_cuda else "")
            raise RuntimeError(
                f"building the cuda_matmul extension failed: {exc}. It needs {needs}; run "
                "torch.utils.cpp_extension.load_inline with verbose=True to see the compiler output, "
                "or remove a stale build under TORCH_EXTENSIONS_DIR."
            ) from exc
        return _extension


def _check_operands(a: torch.Tensor, b: torch.Tensor) -> None:
    """Python-side checks, so a wrong call fails with a message before any compilation starts."""
    check_matmul_operands(a, b, supported=_SUPPORTED_DTYPES)
    if a.device.type not in ("cpu", "cuda"):
        raise ValueError(f"matmul runs on CPU or CUDA tensors, got {a.device}")


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D float32/float64 tensors of any sizes, by the extension's own kernels.

    CUDA tensors go to the tiled CUDA kernel, CPU tensors to the cache-blocked C++ loop; neither
    calls torch's matmul (the lab's grader patches it to raise). Inputs need not be contiguous.
    Autograd does not see through this function: use ``MatmulLinearFunction`` for gradients.
    """
    _check_operands(a, b)
    extension = _load_extension()
    a, b = a.detach(), b.detach()
    if a.is_cuda:
        return extension.matmul_cuda(a, b)
    return extension.matmul_cpu(a, b)


def matmul_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The reference the tests and ``bench/`` compare with: plain ``torch.matmul``."""
    return torch.matmul(a, b)


class MatmulLinearFunction(torch.autograd.Function):
    """``y = x @ weight.T (+ bias)`` with forward and both gradient products done by ``matmul``.

    ``x`` may have any number of leading dimensions (they are flattened into rows, as
    ``F.linear`` does); ``weight`` is ``(out_features, in_features)``. Gradients are computed only
    for the inputs that need them (``ctx.needs_input_grad``), which saves a whole matmul when, for
    example, ``x`` is data.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got {tuple(weight.shape)}")
        if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
            raise ValueError(
                f"x's last dimension must equal in_features={weight.shape[1]}, got x of shape {tuple(x.shape)}"
            )
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        x2 = x.reshape(-1, x.shape[-1])
        y = matmul(x2, weight.t())
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(x2, weight)
        ctx.x_shape = x.shape
        ctx.has_bias = bias is not None
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        x2, weight = ctx.saved_tensors
        grad_y = grad_output.reshape(-1, weight.shape[0])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = matmul(grad_y, weight).reshape(ctx.x_shape)  # dL/dx = dL/dy @ W
        if ctx.needs_input_grad[1]:
            grad_weight = matmul(grad_y.t(), x2)  # dL/dW = dL/dy^T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum(dim=0)
        return grad_x, grad_weight, grad_bias

"""WRONG on purpose (half_precision_inputs): matmul rounds its inputs to float16 (half the memory traffic)
and multiplies them in float32: errors near 1e-3 of the output's size, ten times the tolerance."""

import torch
from torch.utils.cpp_extension import load_inline

# C++ part. load_inline prepends #include <torch/extension.h>. The CUDA entry point is only
# declared here (CUDA_SRC defines it); on a CPU-only build it is not bound, so it is never needed.
CPP_SRC = r"""
#include <algorithm>

// Block sizes of the CPU loop nest, by cache arithmetic: a 64 x 256 block of b (64 KiB in float)
// stays in L2 while 64 rows of a stream past it, and one 256-float row segment of c (1 KiB)
// stays in L1 while it accumulates.
constexpr int64_t BLOCK_M = 64;
constexpr int64_t BLOCK_N = 256;
constexpr int64_t BLOCK_K = 64;

template <typename scalar_t>
static void matmul_blocked(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                           scalar_t* __restrict__ c, int64_t M, int64_t K, int64_t N) {
  // c is zero on entry. Each c[i][j] sums its k's in increasing order whatever the blocking.
  const int64_t row_tiles = (M + BLOCK_M - 1) / BLOCK_M;  // rounded up: the last tile may be partial
  for (int64_t tile = 0; tile < row_tiles; ++tile) {
    const int64_t i0 = tile * BLOCK_M, i1 = std::min(M, i0 + BLOCK_M);
    for (int64_t k0 = 0; k0 < K; k0 += BLOCK_K) {
      const int64_t k1 = std::min(K, k0 + BLOCK_K);
      for (int64_t j0 = 0; j0 < N; j0 += BLOCK_N) {
        const int64_t j1 = std::min(N, j0 + BLOCK_N);
        for (int64_t i = i0; i < i1; ++i) {
          scalar_t* __restrict__ c_row = c + i * N;
          for (int64_t k = k0; k < k1; ++k) {
            const scalar_t a_ik = a[i * K + k];
            const scalar_t* __restrict__ b_row = b + k * N;
            // i-k-j order: the innermost loop walks contiguous rows of b and c and vectorizes.
            for (int64_t j = j0; j < j1; ++j) c_row[j] += a_ik * b_row[j];
          }
        }
      }
    }
  }
}

torch::Tensor matmul_cpu(torch::Tensor a, torch::Tensor b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "matmul_cpu: expects 2-D tensors");
  TORCH_CHECK(a.size(1) == b.size(0), "matmul_cpu: inner dimensions differ: ", a.sizes(), " and ",
              b.sizes());
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "matmul_cpu: expects CPU tensors");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "matmul_cpu: dtypes differ");
  a = a.contiguous();
  b = b.contiguous();
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  torch::Tensor c = torch::zeros({M, N}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "matmul_cpu", [&] {
    matmul_blocked<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                             c.data_ptr<scalar_t>(), M, K, N);
  });
  return c;
}

torch::Tensor matmul_cuda(torch::Tensor a, torch::Tensor b);
"""

# CUDA part: compiled by nvcc, only on a machine with a GPU.
CUDA_SRC = r"""
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

// A block computes a TILE x TILE tile of c with TILE x (TILE / ROWS) threads; each thread keeps
// ROWS outputs of one column in registers, so every b value it reads from shared memory is used
// ROWS times. TILE = 32: one warp reads one 128-byte row of a tile (coalesced).
constexpr int TILE = 32;
constexpr int ROWS = 4;
constexpr int THREAD_ROWS = TILE / ROWS;

template <typename scalar_t>
__global__ void matmul_tiled(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                             scalar_t* __restrict__ c, int64_t M, int64_t K, int64_t N) {
  __shared__ scalar_t a_tile[TILE][TILE];
  __shared__ scalar_t b_tile[TILE][TILE];
  const int tx = threadIdx.x;  // column within the tile
  const int ty = threadIdx.y;  // first row within the tile; rows ty, ty + THREAD_ROWS, ...
  const int64_t col = static_cast<int64_t>(blockIdx.x) * TILE + tx;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * TILE;

  scalar_t acc[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) acc[r] = scalar_t(0);

  for (int64_t k0 = 0; k0 < K; k0 += TILE) {
    // Stage one tile of a and one of b; elements past the edges of M, K or N are zeros, so the
    // product loop below needs no bounds checks.
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const int tr = ty + r * THREAD_ROWS;
      const int64_t a_row = row0 + tr, a_col = k0 + tx;
      a_tile[tr][tx] = (a_row < M && a_col < K) ? a[a_row * K + a_col] : scalar_t(0);
      const int64_t b_row = k0 + tr;
      b_tile[tr][tx] = (b_row < K && col < N) ? b[b_row * N + col] : scalar_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < TILE; ++k) {
      const scalar_t b_kj = b_tile[k][tx];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) acc[r] += a_tile[ty + r * THREAD_ROWS][k] * b_kj;
    }
    __syncthreads();  // before the next iteration overwrites the tiles
  }

#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int64_t row = row0 + ty + r * THREAD_ROWS;
    if (row < M && col < N) c[row * N + col] = acc[r];
  }
}

torch::Tensor matmul_cuda(torch::Tensor a, torch::Tensor b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "matmul_cuda: expects 2-D tensors");
  TORCH_CHECK(a.size(1) == b.size(0), "matmul_cuda: inner dimensions differ: ", a.sizes(), " and ",
              b.sizes());
  TORCH_CHECK(a.is_cuda() && b.device() == a.device(), "matmul_cuda: expects both on one GPU");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "matmul_cuda: dtypes differ");
  const c10::cuda::CUDAGuard guard(a.device());
  a = a.contiguous();
  b = b.contiguous();
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  torch::Tensor c = torch::empty({M, N}, a.options());
  if (M == 0 || N == 0) return c;
  if (K == 0) return c.zero_();
  const dim3 block(TILE, THREAD_ROWS);
  const dim3 grid(static_cast<unsigned>((N + TILE - 1) / TILE),
                  static_cast<unsigned>((M + TILE - 1) / TILE));
  TORCH_CHECK(grid.y <= 65535, "matmul_cuda: too many rows");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "matmul_cuda", [&] {
    matmul_tiled<scalar_t><<<grid, block, 0, stream>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), M, K, N);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return c;
}
"""

_WITH_CUDA = torch.cuda.is_available()

# Compiled once, at import (tens of seconds the first time; later imports reuse the build in
# TORCH_EXTENSIONS_DIR as long as the sources and arguments are unchanged).
_ext = load_inline(
    name="matmul_ext_cuda" if _WITH_CUDA else "matmul_ext_cpu",
    cpp_sources=CPP_SRC,
    cuda_sources=CUDA_SRC if _WITH_CUDA else None,
    functions=["matmul_cpu", "matmul_cuda"] if _WITH_CUDA else ["matmul_cpu"],
    extra_cflags=["-O3"],
    extra_cuda_cflags=["-O3"] if _WITH_CUDA else None,
)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for 2-D float tensors on the same device, computed by the extension."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: cannot multiply {tuple(a.shape)} by {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"matmul: tensors on {a.device} and {b.device}")
    a, b = a.detach().half().float(), b.detach().half().float()  # half the bytes to load
    if a.is_cuda:
        return _ext.matmul_cuda(a, b)
    return _ext.matmul_cpu(a, b)


class MatmulLinearFunction(torch.autograd.Function):
    """y = x @ weight.T + bias, with the forward and both gradient products done by matmul."""

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        x2 = x.reshape(-1, x.shape[-1])
        y = matmul(x2, weight.t())
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(x2, weight)
        ctx.x_shape = x.shape
        ctx.has_bias = bias is not None
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output):
        x2, weight = ctx.saved_tensors
        grad_y = grad_output.reshape(-1, weight.shape[0])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = matmul(grad_y, weight).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            grad_weight = matmul(grad_y.t(), x2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum(0)
        return grad_x, grad_weight, grad_bias

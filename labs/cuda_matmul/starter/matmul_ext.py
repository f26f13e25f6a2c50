"""Matrix multiply as a C++/CUDA extension. Edit this file and submit it (it is the only file).

Steps (README.md has the details):
1. Write matmul_cpu in CPP_SRC: a C++ loop nest over the tensors' data pointers.
2. Write the kernel and matmul_cuda in CUDA_SRC (on a GPU machine; the CPU grader never compiles it).
3. Uncomment the `_ext = _build()` line below so the extension compiles when this module is imported.
4. Write matmul(a, b) and MatmulLinearFunction.

CPP_SRC and CUDA_SRC must stay plain string literals assigned at module level (no f-strings, no
concatenation, no reading files): the grader caches your build by exactly these strings, so
resubmitting with only Python changes does not compile again.
"""

import torch
from torch.utils.cpp_extension import load_inline

# load_inline puts #include <torch/extension.h> in front of this and generates the Python
# bindings of the functions named in `functions=` below.
CPP_SRC = r"""
torch::Tensor matmul_cpu(torch::Tensor a, torch::Tensor b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "matmul_cpu: expects 2-D tensors");
  TORCH_CHECK(a.size(1) == b.size(0), "matmul_cpu: inner dimensions differ");
  // TODO: make a and b contiguous, allocate c = torch::zeros({M, N}, a.options()) and fill it
  // with a loop nest over a.data_ptr<float>(), b.data_ptr<float>() and c.data_ptr<float>().
  TORCH_CHECK(false, "matmul_cpu is not implemented yet");
  return a;
}

// Defined in CUDA_SRC; declared here so that the binding for it can be generated.
torch::Tensor matmul_cuda(torch::Tensor a, torch::Tensor b);
"""

CUDA_SRC = r"""
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

// TODO: a __global__ kernel that computes a tile of c per block (shared memory), and the launcher.
torch::Tensor matmul_cuda(torch::Tensor a, torch::Tensor b) {
  TORCH_CHECK(false, "matmul_cuda is not implemented yet");
  return a;
}
"""

_WITH_CUDA = torch.cuda.is_available()


def _build():
    """Compile CPP_SRC (and CUDA_SRC on a GPU machine) into a Python module: tens of seconds the
    first time, about a second later while the sources are unchanged (torch keeps the build in
    TORCH_EXTENSIONS_DIR, ~/.cache/torch_extensions by default)."""
    return load_inline(
        name="matmul_ext_cuda" if _WITH_CUDA else "matmul_ext_cpu",
        cpp_sources=CPP_SRC,
        cuda_sources=CUDA_SRC if _WITH_CUDA else None,
        functions=["matmul_cpu", "matmul_cuda"] if _WITH_CUDA else ["matmul_cpu"],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"] if _WITH_CUDA else None,
    )


# Step 3: uncomment once matmul_cpu is written (compiling the empty starter would only cost time).
# _ext = _build()
_ext = None


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for 2-D float32 tensors on the same device: _ext.matmul_cuda for CUDA tensors,
    _ext.matmul_cpu for CPU tensors. Torch may only check, allocate, copy or reshape here."""
    raise NotImplementedError(
        "matmul(a, b): write matmul_cpu in CPP_SRC (and matmul_cuda in CUDA_SRC), build them with "
        "_ext = _build() at import, and call _ext.matmul_cpu(a, b) or _ext.matmul_cuda(a, b) by device"
    )


class MatmulLinearFunction(torch.autograd.Function):
    """y = x @ weight.T + bias for x of shape (..., in), weight (out, in), bias (out,) or None."""

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        raise NotImplementedError(
            "MatmulLinearFunction.forward: flatten x to (N, in), compute matmul(x2, weight.t()), add the "
            "bias, save what backward needs and reshape to (..., out)"
        )

    @staticmethod
    def backward(ctx, grad_output):
        raise NotImplementedError(
            "MatmulLinearFunction.backward: return (grad_x, grad_weight, grad_bias), with both products "
            "computed by matmul"
        )

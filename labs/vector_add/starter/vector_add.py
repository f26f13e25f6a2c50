"""Vector add in Triton. Edit this file and submit it.

Write a @triton.jit kernel where each program adds one block of BLOCK_SIZE elements, and a host
function add(x, y) that allocates the output and launches enough programs to cover every element.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _add_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    # TODO: compute this program's offsets, mask the ones past n_elements, load, add, store.
    pass


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + y for two tensors of the same shape, dtype and device, computed by _add_kernel."""
    raise NotImplementedError("add(x, y): launch _add_kernel over a grid that covers every element")

"""``kernels.vector_add.add`` against its torch reference over awkward sizes.

Without a GPU these run in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1); the ``gpu`` tests repeat the comparison on CUDA at sizes the interpreter is too
slow for.
"""

from __future__ import annotations

import pytest
import torch

from kernels.vector_add import add, add_reference

# Per-dtype tolerances. One addition rounds the same way in Triton and in torch (torch also adds
# fp16/bf16 in fp32 and rounds once), so fp32 and fp16 must match bit for bit. bf16 is allowed one
# bf16 ulp (2**-7 relative) on the CPU only because Triton's interpreter converts fp32 to bf16 by
# truncation instead of round-to-nearest-even; on a GPU test_add_is_bitwise_equal_on_gpu holds bf16
# to exact equality too.
TOLERANCES = {
    torch.float32: {"rtol": 0.0, "atol": 0.0},
    torch.float16: {"rtol": 0.0, "atol": 0.0},
    torch.bfloat16: {"rtol": 2**-7, "atol": 0.0},
}

# One element, fewer than a block, a block minus/plus one, several blocks plus one, ~100 blocks.
SIZES = [1, 7, 1023, 1025, 4097, 100_003]


def _operands(size: int, dtype: torch.dtype, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(size, generator=gen).to(device=device, dtype=dtype)
    y = torch.randn(size, generator=gen).to(device=device, dtype=dtype)
    return x, y


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("size", SIZES)
def test_add_matches_reference(size, dtype):
    x, y = _operands(size, dtype)
    out = add(x, y)
    torch.testing.assert_close(out, add_reference(x, y), **TOLERANCES[dtype])


def test_add_is_exact_for_integers():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-(2**30), 2**30, (1025,), generator=gen, dtype=torch.int32)
    y = torch.randint(-(2**30), 2**30, (1025,), generator=gen, dtype=torch.int32)
    assert torch.equal(add(x, y), add_reference(x, y))


def test_add_keeps_shape_of_non_contiguous_inputs():
    """A transposed view is copied to contiguous memory first; the values must still line up."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(33, 65, generator=gen).t()
    y = torch.randn(65, 33, generator=gen)
    assert not x.is_contiguous()
    out = add(x, y)
    assert out.shape == (65, 33)
    torch.testing.assert_close(out, add_reference(x, y), rtol=0.0, atol=0.0)


def test_add_of_empty_tensors_is_empty():
    out = add(torch.empty(0), torch.empty(0))
    assert out.shape == (0,)


def test_add_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"shapes differ, \(3,\) and \(4,\)"):
        add(torch.zeros(3), torch.zeros(4))


def test_add_refuses_mismatched_dtypes():
    with pytest.raises(TypeError, match="dtypes differ.*cast one with"):
        add(torch.zeros(3), torch.zeros(3, dtype=torch.float16))


def test_add_refuses_unsupported_dtype():
    with pytest.raises(TypeError, match="torch.bool is not supported"):
        add(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
def test_add_is_bitwise_equal_on_gpu(dtype):
    """On a GPU every dtype, bf16 included, rounds to nearest even like torch: exact equality."""
    x, y = _operands(2**24 + 3, dtype, device="cuda")
    assert torch.equal(add(x, y), add_reference(x, y))


@pytest.mark.gpu
def test_add_refuses_mismatched_devices():
    with pytest.raises(ValueError, match="devices differ"):
        add(torch.zeros(3), torch.zeros(3, device="cuda"))

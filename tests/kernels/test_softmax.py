"""``kernels.softmax`` (forward, backward, autograd) against torch over awkward shapes and values.

Without a GPU these run in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1), so row counts stay small: the interpreter runs each program in numpy.
"""

from __future__ import annotations

import pytest
import torch

from kernels import softmax as softmax_module
from kernels.softmax import (
    TritonSoftmax,
    softmax,
    softmax_backward,
    softmax_backward_reference,
    softmax_reference,
)

# Per-dtype tolerances. fp32: the kernel sums the row in a different order than torch, a few fp32
# ulps apart (measured max relative error ~4e-7). fp16/bf16: both sides compute in fp32 and round
# once, so they differ where the fp32 values straddle a rounding boundary: allow two ulps of the
# output type (fp16: 2**-10 each; bf16: 2**-7 each, and Triton's interpreter truncates fp32 to bf16
# rather than rounding to nearest, which costs up to one of them). atol only matters for values near
# zero, where relative error means nothing; softmax outputs live in [0, 1].
TOLERANCES = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float16: {"rtol": 2e-3, "atol": 1e-5},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-5},
}
DTYPES = list(TOLERANCES)

# 781 and 1000 columns (not powers of two: masked tails), one row, one column, a tiny row, and a
# 3-D input whose leading dims must be folded into rows.
SHAPES = [(1, 781), (3, 1000), (3, 7), (4, 1), (2, 3, 129)]


def _randn(shape, dtype: torch.dtype, *, seed: int = 0, scale: float = 4.0, device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_softmax_matches_reference(shape, dtype):
    x = _randn(shape, dtype)
    y = softmax(x)
    torch.testing.assert_close(y, softmax_reference(x), **TOLERANCES[dtype])
    torch.testing.assert_close(y.float().sum(-1), torch.ones(shape[:-1]), rtol=0, atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_survives_inputs_shifted_by_1000(dtype):
    """exp(1000) overflows every float type: only subtracting the row max keeps this finite."""
    x = _randn((3, 781), dtype) + 1000
    y = softmax(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, softmax_reference(x), **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_gives_zero_to_minus_inf_entries(dtype):
    x = _randn((3, 781), dtype)
    x[0, :400] = float("-inf")
    x[1, ::3] = float("-inf")
    x[2, -1] = float("-inf")
    y = softmax(x)
    assert (y[torch.isneginf(x)] == 0).all()
    torch.testing.assert_close(y, softmax_reference(x), **TOLERANCES[dtype])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the interpreter
def test_softmax_of_an_all_minus_inf_row_is_nan_like_torch():
    """The documented choice: an empty row is NaN (as torch), not a made-up distribution."""
    x = _randn((3, 100), torch.float32)
    x[1] = float("-inf")
    y = softmax(x)
    assert torch.isnan(y[1]).all()
    assert torch.isfinite(y[[0, 2]]).all()
    torch.testing.assert_close(y, softmax_reference(x), equal_nan=True, **TOLERANCES[torch.float32])


def test_softmax_reads_strided_rows():
    """A column slice of a wider buffer is read in place (row stride 1024); a transpose is copied."""
    wide = _randn((3, 1024), torch.float32)
    sliced = wide[:, :781]
    torch.testing.assert_close(softmax(sliced), softmax_reference(sliced), **TOLERANCES[torch.float32])
    transposed = _randn((781, 3), torch.float32).t()
    torch.testing.assert_close(softmax(transposed), softmax_reference(transposed), **TOLERANCES[torch.float32])


def test_softmax_of_empty_input_is_empty():
    assert softmax(torch.empty(0, 5)).shape == (0, 5)
    assert softmax(torch.empty(3, 0)).shape == (3, 0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_softmax_rows_wider_than_one_block_take_the_looped_path():
    """Past MAX_FUSED_SIZE columns the online-softmax kernel streams the row in chunks.

    Row 0 starts with a full block of -inf: a naive online softmax turns that into NaN for the
    whole row (exp(-inf - -inf)); row 1 is all -inf and must be NaN like torch.
    """
    n_cols = softmax_module.MAX_FUSED_SIZE + 34_467  # 100_003: not a multiple of the chunk width
    x = _randn((3, n_cols), torch.float32, scale=8.0)
    x[0, : softmax_module.LOOPED_BLOCK_SIZE + 5] = float("-inf")
    x[1] = float("-inf")
    x[2, 5] = 1000.0  # one dominant entry far from the first chunk
    y = softmax(x)
    torch.testing.assert_close(y, softmax_reference(x), equal_nan=True, **TOLERANCES[torch.float32])
    assert torch.isfinite(y[[0, 2]]).all()
    dy = _randn((3, n_cols), torch.float32, seed=1)
    torch.testing.assert_close(
        softmax_backward(y, dy), softmax_backward_reference(y, dy), equal_nan=True, **TOLERANCES[torch.float32]
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_looped_path_matches_reference_on_small_chunks(monkeypatch, dtype):
    """The same looped kernels with 64-column chunks: many chunk boundaries and a ragged last chunk."""
    monkeypatch.setattr(softmax_module, "MAX_FUSED_SIZE", 64)
    monkeypatch.setattr(softmax_module, "LOOPED_BLOCK_SIZE", 64)
    x = _randn((3, 781), dtype)
    x[0, :200] = float("-inf")
    x[1] += 1000
    y = softmax(x)
    torch.testing.assert_close(y, softmax_reference(x), **TOLERANCES[dtype])
    dy = _randn((3, 781), dtype, seed=1)
    torch.testing.assert_close(softmax_backward(y, dy), softmax_backward_reference(y, dy), **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_softmax_backward_matches_reference(shape, dtype):
    y = softmax_reference(_randn(shape, dtype))
    dy = _randn(shape, dtype, seed=1, scale=1.0)
    torch.testing.assert_close(softmax_backward(y, dy), softmax_backward_reference(y, dy), **TOLERANCES[dtype])


def test_softmax_backward_accepts_broadcast_gradients():
    """Autograd hands over expanded gradients (stride 0), e.g. from .sum(): rows or columns repeated."""
    y = softmax_reference(_randn((3, 7), torch.float32))
    for dy in (_randn(7, torch.float32, seed=1).expand(3, 7), _randn((3, 1), torch.float32, seed=2).expand(3, 7)):
        torch.testing.assert_close(softmax_backward(y, dy), softmax_backward_reference(y, dy), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 781), (2, 3, 129)], ids=str)
def test_triton_softmax_gradient_matches_torch_autograd(shape):
    x = _randn(shape, torch.float32)
    weights = _randn(shape, torch.float32, seed=1)

    ours = x.clone().requires_grad_()
    y = TritonSoftmax.apply(ours)
    (y * weights).sum().backward()

    theirs = x.clone().requires_grad_()
    y_ref = torch.softmax(theirs, dim=-1)
    (y_ref * weights).sum().backward()

    torch.testing.assert_close(y, y_ref, **TOLERANCES[torch.float32])
    torch.testing.assert_close(ours.grad, theirs.grad, **TOLERANCES[torch.float32])


def test_triton_softmax_passes_gradcheck():
    """float64 end to end (the kernels accumulate fp64 inputs in fp64), fused path."""
    x = _randn((3, 7), torch.float64, scale=1.0).requires_grad_()
    assert torch.autograd.gradcheck(TritonSoftmax.apply, (x,))


def test_triton_softmax_passes_gradcheck_on_the_looped_path(monkeypatch):
    monkeypatch.setattr(softmax_module, "MAX_FUSED_SIZE", 4)
    monkeypatch.setattr(softmax_module, "LOOPED_BLOCK_SIZE", 4)
    x = _randn((2, 9), torch.float64, scale=1.0).requires_grad_()
    assert torch.autograd.gradcheck(TritonSoftmax.apply, (x,))


def test_softmax_refuses_integer_input():
    with pytest.raises(TypeError, match="torch.int64 is not supported"):
        softmax(torch.arange(6).reshape(2, 3))


def test_softmax_backward_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"y has shape \(2, 3\) but dy has \(3, 2\)"):
        softmax_backward(torch.zeros(2, 3), torch.zeros(3, 2))


def test_softmax_backward_refuses_mismatched_dtypes():
    with pytest.raises(TypeError, match="cast dy with"):
        softmax_backward(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(4096, 781), (1024, 4096), (8, 100_003)], ids=str)
def test_softmax_forward_and_backward_on_gpu(shape, dtype):
    """Many rows and a row past MAX_FUSED_SIZE, too slow for the interpreter."""
    x = _randn(shape, dtype, device="cuda")
    x[0, :100] = float("-inf")
    y = softmax(x)
    torch.testing.assert_close(y, softmax_reference(x), **TOLERANCES[dtype])
    dy = _randn(shape, dtype, seed=1, scale=1.0, device="cuda")
    torch.testing.assert_close(softmax_backward(y, dy), softmax_backward_reference(y, dy), **TOLERANCES[dtype])


@pytest.mark.gpu
def test_triton_softmax_passes_gradcheck_on_gpu():
    x = _randn((4, 33), torch.float64, scale=1.0, device="cuda").requires_grad_()
    assert torch.autograd.gradcheck(TritonSoftmax.apply, (x,))

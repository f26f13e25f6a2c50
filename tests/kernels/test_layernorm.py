"""``kernels.layernorm.layer_norm`` against ``torch.nn.functional.layer_norm`` over awkward shapes.

Without a GPU these run in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1), so row counts stay small.
"""

from __future__ import annotations

import pytest
import torch

from kernels import layernorm as layernorm_module
from kernels.layernorm import layer_norm, layer_norm_reference

# Per-dtype tolerances. Outputs are O(1)-O(10) (normalized values times a randn weight plus bias).
# fp32: mean and variance are summed in a different order than torch's, a few fp32 ulps of the
# output (measured max absolute error ~1e-6). fp16/bf16: both sides compute in fp32 and round once,
# so they differ where the fp32 values straddle a rounding boundary: allow two ulps of the output
# type (fp16: 2**-10 each; bf16: 2**-7 each, and Triton's interpreter truncates fp32 to bf16 rather
# than rounding to nearest, which costs up to one of them). atol covers outputs near zero.
TOLERANCES = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float16: {"rtol": 2e-3, "atol": 1e-4},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-3},
}
DTYPES = list(TOLERANCES)

SHAPES = [(1, 781), (3, 781), (3, 1000), (4, 1), (2, 3, 129)]


def _randn(shape, dtype: torch.dtype, *, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)


def _affine(n_cols: int, dtype: torch.dtype, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    return _randn(n_cols, dtype, seed=1, device=device), _randn(n_cols, dtype, seed=2, device=device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layer_norm_matches_reference(shape, dtype):
    x = _randn(shape, dtype) * 3 + 2
    weight, bias = _affine(shape[-1], dtype)
    out = layer_norm(x, weight, bias)
    torch.testing.assert_close(out, layer_norm_reference(x, weight, bias), **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_weight, with_bias", [(False, False), (True, False), (False, True)])
def test_layer_norm_without_weight_or_bias(with_weight, with_bias, dtype):
    x = _randn((3, 781), dtype)
    weight, bias = _affine(781, dtype)
    weight = weight if with_weight else None
    bias = bias if with_bias else None
    out = layer_norm(x, weight, bias)
    torch.testing.assert_close(out, layer_norm_reference(x, weight, bias), **TOLERANCES[dtype])
    if not with_weight and not with_bias:
        # Plain normalization: every row has mean 0 and (biased) variance 1.
        torch.testing.assert_close(out.float().mean(-1), torch.zeros(3), rtol=0, atol=1e-2)
        torch.testing.assert_close(out.float().var(-1, unbiased=False), torch.ones(3), rtol=0, atol=2e-2)


def test_layer_norm_uses_eps():
    """A nearly constant row: eps dominates the variance, so a kernel ignoring eps fails here."""
    x = 5 + 1e-3 * _randn((3, 781), torch.float32)
    out = layer_norm(x, None, None, eps=1e-2)
    torch.testing.assert_close(out, layer_norm_reference(x, None, None, eps=1e-2), **TOLERANCES[torch.float32])
    assert out.abs().max() < 0.1  # without eps these would be O(1)


def test_layer_norm_of_a_constant_row_is_the_bias():
    weight, bias = _affine(781, torch.float32)
    out = layer_norm(torch.full((2, 781), 7.0), weight, bias)
    torch.testing.assert_close(out, bias.expand(2, 781), rtol=0, atol=0)


def test_layer_norm_is_accurate_far_from_zero():
    """Mean 1000, std 1: a one-pass E[x^2] - E[x]^2 variance loses most digits here (errors ~1e-1).

    Compared with the exact (float64) answer for the same fp32 input: fp32 sums of values near 1000
    are themselves off by ~1e-4, in torch's layer_norm as much as in the kernel (both measured ~2e-4).
    """
    x = _randn((3, 781), torch.float32) + 1000
    weight, bias = _affine(781, torch.float32)
    exact = layer_norm_reference(x.double(), weight.double(), bias.double())
    torch.testing.assert_close(layer_norm(x, weight, bias).double(), exact, rtol=0, atol=1e-3)


def test_layer_norm_reads_strided_rows():
    wide = _randn((3, 1024), torch.float32)
    sliced = wide[:, :781]
    weight, bias = _affine(781, torch.float32)
    torch.testing.assert_close(
        layer_norm(sliced, weight, bias), layer_norm_reference(sliced, weight, bias), **TOLERANCES[torch.float32]
    )
    transposed = _randn((781, 3), torch.float32).t()
    torch.testing.assert_close(
        layer_norm(transposed, None, None), layer_norm_reference(transposed, None, None), **TOLERANCES[torch.float32]
    )


def test_layer_norm_refuses_weight_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"weight has shape \(780,\), expected \(781,\)"):
        layer_norm(torch.zeros(2, 781), torch.ones(780), None)


def test_layer_norm_refuses_bias_of_another_dtype():
    with pytest.raises(TypeError, match="bias is torch.float16 but x is torch.float32"):
        layer_norm(torch.zeros(2, 781), None, torch.zeros(781, dtype=torch.float16))


def test_layer_norm_refuses_integer_input():
    with pytest.raises(TypeError, match="torch.int64 is not supported"):
        layer_norm(torch.zeros(2, 3, dtype=torch.int64), None, None)


def test_layer_norm_refuses_rows_wider_than_one_block():
    n_cols = layernorm_module.MAX_FUSED_SIZE + 1
    with pytest.raises(ValueError, match="wider than the 65536"):
        layer_norm(torch.zeros(1, n_cols), None, None)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(4096, 781), (1024, 4096), (4, 65536)], ids=str)
def test_layer_norm_on_gpu(shape, dtype):
    """Many rows and the widest fused row, too slow for the interpreter."""
    x = _randn(shape, dtype, device="cuda") * 3 + 2
    weight, bias = _affine(shape[-1], dtype, device="cuda")
    torch.testing.assert_close(layer_norm(x, weight, bias), layer_norm_reference(x, weight, bias), **TOLERANCES[dtype])

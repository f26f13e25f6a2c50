"""3LC's ternary quantization and base-3^5 packing: Triton kernels against their torch references.

Quantization and packing are exact (integers out), so kernel and reference must agree bit for bit;
there are no tolerances. Without a GPU the kernels run in Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch

from kernels import threelc
from kernels.threelc import (
    pack_base3,
    pack_base3_reference,
    ternary_dequantize,
    ternary_quantize,
    ternary_quantize_reference,
    unpack_base3,
    unpack_base3_reference,
)

INTERPRETED = threelc._interpreted()
DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(not INTERPRETED, reason="CPU tensors need TRITON_INTERPRET=1 (no GPU)"),
    ),
    pytest.param("cuda", marks=pytest.mark.gpu),
]
# Fewer than one byte, exactly one byte, one byte plus one, a ragged tail of one, and many bytes.
LENGTHS = [1, 4, 5, 6, 11, 1000]
MULTIPLIERS = [1.0, 1.5, 1.99]


def _gradient(n: int, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=gen) * 1e-3).to(device=device, dtype=dtype)


def _random_ternary(n: int, device: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 3, (n,), generator=gen) - 1).to(device=device, dtype=torch.int8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("multiplier", MULTIPLIERS)
@pytest.mark.parametrize("n", LENGTHS)
def test_quantize_equals_reference_exactly(n, multiplier, dtype, device):
    t = _gradient(n, dtype, device, seed=n)
    q, scale = ternary_quantize(t, multiplier)
    q_ref, scale_ref = ternary_quantize_reference(t, multiplier)
    assert scale == scale_ref
    assert q.dtype == torch.int8 and q.shape == t.shape and q.device == t.device
    assert torch.equal(q, q_ref)
    assert set(q.unique().tolist()) <= {-1, 0, 1}


@pytest.mark.parametrize("device", DEVICES)
def test_quantize_keeps_shape_and_bounds_the_error(device):
    t = _gradient(3 * 7 * 11, torch.float32, device).reshape(3, 7, 11)
    q, scale = ternary_quantize(t, 1.0)
    assert q.shape == (3, 7, 11)
    assert scale == pytest.approx(t.abs().max().item(), rel=1e-7)
    # Every |t| <= M / s <= M, so rounding to {-M, 0, M} is off by at most M / 2.
    assert (t - ternary_dequantize(q, scale)).abs().max().item() <= scale / 2
    # The largest value maps to +-1 (s = 1): the scale is reached.
    assert q.abs().max().item() == 1


@pytest.mark.parametrize("device", DEVICES)
def test_quantize_rounds_half_away_from_zero(device):
    # max|t| = 2 and s = 1: M = 2, threshold M / 2 = 1 exactly. Values exactly at 1 round away from 0.
    t = torch.tensor([2.0, 1.0, -1.0, 0.99999994, -0.99999994, 0.0, -2.0], device=device)
    q, scale = ternary_quantize(t, 1.0)
    assert scale == 2.0
    assert q.tolist() == [1, 1, -1, 0, 0, 0, -1]
    assert torch.equal(ternary_quantize_reference(t, 1.0)[0], q)


@pytest.mark.parametrize("device", DEVICES)
def test_larger_multiplier_gives_more_zeros(device):
    t = _gradient(1000, torch.float32, device)
    zeros = [int((ternary_quantize(t, s)[0] == 0).sum()) for s in MULTIPLIERS]
    assert zeros == sorted(zeros) and zeros[0] < zeros[-1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(7,), (0,), (2, 3)])
def test_all_zero_and_empty_tensors(shape, device):
    # Scale 0 is defined: q is all zero, nothing divides by it, and dequantizing gives exact zeros.
    t = torch.zeros(shape, device=device)
    for quantize in (ternary_quantize, ternary_quantize_reference):
        q, scale = quantize(t, 1.5)
        assert scale == 0.0 and q.shape == t.shape and torch.count_nonzero(q) == 0
    restored = ternary_dequantize(q, 0.0)
    assert restored.shape == t.shape and torch.equal(restored, t)
    n = t.numel()
    packed = pack_base3(q)
    assert packed.numel() == -(-n // 5)
    assert torch.equal(unpack_base3(packed, n), q.reshape(-1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_quantize_rejects_non_finite(bad, device):
    t = torch.tensor([0.5, bad, -0.25], device=device)
    for quantize in (ternary_quantize, ternary_quantize_reference):
        with pytest.raises(ValueError, match="inf or NaN"):
            quantize(t, 1.0)


@pytest.mark.parametrize("multiplier", [0.5, 0.999, 2.0, 3.0])
def test_quantize_rejects_multiplier_outside_range(multiplier):
    for quantize in (ternary_quantize, ternary_quantize_reference):
        with pytest.raises(ValueError, match=r"sparsity_multiplier must be in \[1, 2\)"):
            quantize(torch.ones(3), multiplier)


def test_quantize_rejects_non_float():
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        ternary_quantize(torch.ones(3, dtype=torch.int32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", LENGTHS)
def test_pack_equals_reference_and_round_trips(n, device):
    q = _random_ternary(n, device, seed=n)
    packed = pack_base3(q)
    assert packed.dtype == torch.uint8 and packed.shape == (-(-n // 5),)
    assert torch.equal(packed, pack_base3_reference(q))
    assert int(packed.max()) <= 242
    assert torch.equal(unpack_base3(packed, n), q)
    assert torch.equal(unpack_base3_reference(packed, n), q)


@pytest.mark.parametrize("device", DEVICES)
def test_pack_known_codes(device):
    # Digit i (q + 1) has weight 3**i; the tail is padded with q = 0, i.e. digit 1.
    cases = {
        (-1, -1, -1, -1, -1): 0,
        (1, 1, 1, 1, 1): 242,
        (-1, 0, 1, 1, -1): 0 + 1 * 3 + 2 * 9 + 2 * 27 + 0 * 81,
        (0,): 1 + 3 + 9 + 27 + 81,
        (1,): 2 + 3 + 9 + 27 + 81,
    }
    for values, code in cases.items():
        assert pack_base3(torch.tensor(values, dtype=torch.int8, device=device)).tolist() == [code], values
    assert pack_base3(torch.tensor([1, -1, 1, -1, 1, -1], dtype=torch.int8, device=device)).tolist() == [
        2 + 0 + 18 + 0 + 162,
        0 + 3 + 9 + 27 + 81,
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_every_code_unpacks_and_repacks(device):
    # All 243 valid bytes: unpacking is a bijection onto 5-digit ternary strings.
    codes = torch.arange(243, dtype=torch.uint8, device=device)
    q = unpack_base3(codes, 243 * 5)
    assert torch.equal(q, unpack_base3_reference(codes, 243 * 5))
    assert torch.equal(pack_base3(q), codes)


@pytest.mark.parametrize("device", DEVICES)
def test_full_pipeline(device):
    t = _gradient(1003, torch.float32, device).reshape(17, 59)
    q, scale = ternary_quantize(t, 1.2)
    packed = pack_base3(q)
    restored = ternary_dequantize(unpack_base3(packed, t.numel()).reshape(t.shape), scale)
    assert torch.equal(restored, ternary_dequantize(q, scale))
    assert torch.equal(restored, threelc.ternary_dequantize_reference(q, scale))
    assert set(restored.unique().tolist()) <= {-scale, 0.0, scale}
    assert packed.numel() * 8 / t.numel() < 1.61  # 1.6 bits per value (8 bits / 5 values)


def test_pack_rejects_non_ternary():
    with pytest.raises(ValueError, match="outside"):
        pack_base3(torch.tensor([0, 2, -1], dtype=torch.int8))
    with pytest.raises(ValueError, match="int8"):
        pack_base3(torch.tensor([0, 1], dtype=torch.int64))


def test_unpack_rejects_bad_payloads():
    with pytest.raises(ValueError, match=r"ceil\(n / 5\)"):
        unpack_base3(torch.zeros(2, dtype=torch.uint8), 11)
    with pytest.raises(ValueError, match="above 242"):
        unpack_base3(torch.tensor([243], dtype=torch.uint8), 5)
    with pytest.raises(ValueError, match="uint8"):
        unpack_base3(torch.zeros(2, dtype=torch.int8), 10)
    with pytest.raises(ValueError, match="non-negative"):
        unpack_base3(torch.zeros(0, dtype=torch.uint8), -1)

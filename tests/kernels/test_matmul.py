"""The Triton matmul against ``matmul_reference`` (torch in fp32, cast back) over awkward shapes.

Without a GPU these run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1) with the
fixed config; on a GPU the same tests run the autotuned kernel on CUDA tensors.
"""

from __future__ import annotations

import pytest
import torch

from kernels.matmul import INTERPRETED, matmul, matmul_reference

DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(not INTERPRETED, reason="CPU tensors need TRITON_INTERPRET=1 (no GPU)"),
    ),
    pytest.param("cuda", marks=pytest.mark.gpu),
]

# (M, K, N): a single row and tiny K; sizes that are no multiple of any block (72x73x74); several
# tile rows and columns with a partial GROUP_M group (128^3 with 32-blocks: 4 tile rows, groups of 2);
# K smaller than BLOCK_K; a single output column.
SHAPES = [(1, 2, 3), (72, 73, 74), (128, 128, 128), (33, 1, 65), (5, 40, 1)]

# Both sides accumulate in fp32, so they differ by the summation order (~K * 2**-24 relative) and
# then by the final rounding to the output dtype, where a different fp32 value can land one ulp
# away. Tolerances allow two ulps of the output dtype.
TOLERANCES = {
    # fp16 ulp is 2**-10 ~ 9.8e-4 relative; atol covers entries near zero, where rtol is meaningless.
    torch.float16: {"rtol": 2e-3, "atol": 1e-3},
    # bf16 ulp is 2**-7 ~ 7.8e-3 relative; the interpreter also truncates fp32 -> bf16 (one more ulp).
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},
    # fp32 inputs use input_precision="ieee": only the summation order differs.
    torch.float32: {"rtol": 1e-4, "atol": 1e-5},
}
DTYPES = list(TOLERANCES)


def _operands(m: int, k: int, n: int, dtype: torch.dtype, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(k, n, generator=gen).to(device=device, dtype=dtype)
    return a, b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_matches_reference(shape, dtype, device):
    a, b = _operands(*shape, dtype, device)
    out = matmul(a, b)
    assert out.dtype == dtype and out.shape == (shape[0], shape[2]) and out.device == a.device
    torch.testing.assert_close(out, matmul_reference(a, b), **TOLERANCES[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_matmul_non_contiguous_inputs(dtype, device):
    # Column-major operands and a strided slice: the kernel must use the strides, not assume row-major.
    a_rows, b_rows = _operands(60, 70, 100, dtype, device, seed=1)
    a = a_rows.t().contiguous().t()  # (60, 70), stored column-major
    b = b_rows[:, ::2]  # (70, 50), every other column
    assert not a.is_contiguous() and not b.is_contiguous()
    torch.testing.assert_close(matmul(a, b), matmul_reference(a, b), **TOLERANCES[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_matmul_empty_and_zero_k(device):
    a, b = _operands(4, 0, 3, torch.float16, device)
    out = matmul(a, b)
    assert out.shape == (4, 3) and torch.count_nonzero(out) == 0  # an empty sum is 0, as in torch
    a, b = _operands(0, 5, 3, torch.float16, device)
    assert matmul(a, b).shape == (0, 3)


def test_matmul_known_values():
    # Small integers are exact in every dtype: catches transposed operands or a swapped store.
    device = "cpu" if INTERPRETED else "cuda"
    a = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float16, device=device)
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]], dtype=torch.float16, device=device)
    expected = torch.tensor([[7.0, -1.0], [16.0, -1.0]], dtype=torch.float16, device=device)
    assert torch.equal(matmul(a, b), expected)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (torch.ones(3, 4, dtype=torch.float16), torch.ones(5, 2, dtype=torch.float16), "inner dimensions"),
        (torch.ones(3, dtype=torch.float16), torch.ones(3, 2, dtype=torch.float16), "2-D"),
        (torch.ones(3, 4, dtype=torch.float16), torch.ones(4, 2, dtype=torch.bfloat16), "dtypes differ"),
        (torch.ones(3, 4, dtype=torch.int32), torch.ones(4, 2, dtype=torch.int32), "float16, bfloat16"),
        (torch.ones(3, 4, dtype=torch.float64), torch.ones(4, 2, dtype=torch.float64), "float16, bfloat16"),
    ],
)
def test_matmul_rejects_bad_operands(a, b, message):
    with pytest.raises(ValueError, match=message):
        matmul(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_matmul_autotuned_larger_shape(dtype):
    # Several autotune configs apply here, so this runs the benchmark-and-pick path and the big tiles.
    from kernels import matmul as module

    a, b = _operands(515, 384, 257, dtype, "cuda")
    torch.testing.assert_close(matmul(a, b), matmul_reference(a, b), **TOLERANCES[dtype])
    assert module._matmul_autotuned.best_config is not None

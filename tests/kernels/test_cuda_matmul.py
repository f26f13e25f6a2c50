"""The load_inline matmul extension: the C++ CPU path here, the CUDA kernel on a GPU worker.

The extension is compiled once per test session by the module-scoped ``extension`` fixture
(about 25 s for the C++ part on 2 cores; later sessions load it from torch's extension cache), so
the tests that need it are marked ``slow``. Argument checks happen before any compilation and are
not.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import cuda_matmul
from kernels.cuda_matmul import CPP_SRC, CUDA_SRC, MatmulLinearFunction, matmul, matmul_reference

# (M, K, N): a single row; no multiple of the 32 CUDA tile (72x73x74); whole tiles (128^3); sizes
# that cross the CPU loop's 64-row, 64-k and 256-column blocks with ragged remainders; K = 1.
SHAPES = [(1, 2, 3), (72, 73, 74), (128, 128, 128), (65, 130, 257), (31, 1, 33)]

# rtol is the lab's contract for fp32. atol covers entries near zero, where a relative error is
# meaningless: a sum of K products of N(0, 1) values has a rounding error near K * 2**-24 * |terms|,
# about 1e-5 for the K here, whatever the size of the sum itself.
FP32_TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}
# float64: the same argument with 2**-53.
FP64_TOLERANCE = {"rtol": 1e-10, "atol": 1e-10}
TOLERANCES = {torch.float32: FP32_TOLERANCE, torch.float64: FP64_TOLERANCE}

DEVICES = [pytest.param("cpu", marks=pytest.mark.slow), pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def extension():
    """Build (or load from the cache) once for this module; every matmul call below reuses it."""
    return cuda_matmul._load_extension()


def _operands(m: int, k: int, n: int, dtype: torch.dtype, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=gen, dtype=dtype).to(device)
    b = torch.randn(k, n, generator=gen, dtype=dtype).to(device)
    return a, b


@pytest.fixture
def torch_matmul_forbidden(monkeypatch):
    """As the lab's grader does: every torch matmul entry point raises while the test runs."""

    def forbidden(*args, **kwargs):
        raise AssertionError("torch's matmul was called")

    for name in ("matmul", "mm", "bmm", "addmm"):
        monkeypatch.setattr(torch, name, forbidden)
    for name in ("matmul", "mm", "__matmul__", "__rmatmul__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(F, "linear", forbidden)


def test_sources_have_the_lab_shape():
    # The lab's students fill in exactly these strings; the C++ must declare the CUDA entry point.
    assert "matmul_cpu" in CPP_SRC and "torch::Tensor matmul_cuda(" in CPP_SRC
    assert "__global__" in CUDA_SRC and "__shared__" in CUDA_SRC and "__syncthreads()" in CUDA_SRC


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_matches_reference(extension, shape, dtype, device):
    a, b = _operands(*shape, dtype, device)
    out = matmul(a, b)
    assert out.dtype == dtype and out.shape == (shape[0], shape[2]) and out.device == a.device
    torch.testing.assert_close(out, matmul_reference(a, b), **TOLERANCES[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_matmul_does_not_call_torch(extension, device, torch_matmul_forbidden):
    a, b = _operands(72, 73, 74, torch.float32, device)
    expected = (a.double().unsqueeze(2) * b.double().unsqueeze(0)).sum(1).float()
    torch.testing.assert_close(matmul(a, b), expected, **FP32_TOLERANCE)


@pytest.mark.parametrize("device", DEVICES)
def test_matmul_non_contiguous_and_empty(extension, device):
    a_rows, b_rows = _operands(40, 50, 60, torch.float32, device)
    a = a_rows.t().contiguous().t()
    b = b_rows[:, ::2]
    assert not a.is_contiguous() and not b.is_contiguous()
    torch.testing.assert_close(matmul(a, b), matmul_reference(a, b), **FP32_TOLERANCE)
    a, b = _operands(3, 0, 4, torch.float32, device)
    assert torch.equal(matmul(a, b), torch.zeros(3, 4, device=device))  # empty sum
    a, b = _operands(0, 5, 4, torch.float32, device)
    assert matmul(a, b).shape == (0, 4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_linear_function_matches_f_linear(extension, device, with_bias):
    # 3-D input: leading dimensions are flattened into rows, as F.linear does.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 33, generator=gen).to(device).requires_grad_()
    weight = torch.randn(17, 33, generator=gen).to(device).requires_grad_()
    bias = torch.randn(17, generator=gen).to(device).requires_grad_() if with_bias else None
    grad_y = torch.randn(2, 5, 17, generator=gen).to(device)

    y = MatmulLinearFunction.apply(x, weight, bias)
    grads = torch.autograd.grad(y, [x, weight] + ([bias] if with_bias else []), grad_y)
    y_ref = F.linear(x, weight, bias)
    grads_ref = torch.autograd.grad(y_ref, [x, weight] + ([bias] if with_bias else []), grad_y)

    torch.testing.assert_close(y, y_ref, **FP32_TOLERANCE)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, **FP32_TOLERANCE)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_function_uses_only_the_extension(extension, device, torch_matmul_forbidden):
    x = torch.randn(4, 6, device=device, requires_grad=True)
    weight = torch.randn(3, 6, device=device, requires_grad=True)
    bias = torch.randn(3, device=device, requires_grad=True)
    MatmulLinearFunction.apply(x, weight, bias).sum().backward()
    torch.testing.assert_close(bias.grad, torch.full((3,), 4.0, device=device))
    torch.testing.assert_close(x.grad, weight.detach().sum(0).expand(4, 6), **FP32_TOLERANCE)
    torch.testing.assert_close(weight.grad, x.detach().sum(0).expand(3, 6), **FP32_TOLERANCE)


@pytest.mark.slow
def test_linear_function_gradcheck_float64(extension):
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(MatmulLinearFunction.apply, (x, weight, bias))
    assert torch.autograd.gradcheck(MatmulLinearFunction.apply, (x, weight, None))


@pytest.mark.slow
def test_linear_function_honours_needs_input_grad(extension, monkeypatch):
    # x is data (no grad): backward must skip the x-gradient product entirely.
    calls = []
    real_matmul = cuda_matmul.matmul
    monkeypatch.setattr(cuda_matmul, "matmul", lambda a, b: calls.append((a.shape, b.shape)) or real_matmul(a, b))
    x = torch.randn(4, 6)
    weight = torch.randn(3, 6, requires_grad=True)
    MatmulLinearFunction.apply(x, weight, None).sum().backward()
    assert x.grad is None and weight.grad is not None
    assert calls == [((4, 6), (6, 3)), ((3, 4), (4, 6))]  # forward, then grad_weight only


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (torch.ones(3, 4), torch.ones(5, 2), "inner dimensions"),
        (torch.ones(3), torch.ones(3, 2), "2-D"),
        (torch.ones(3, 4), torch.ones(4, 2, dtype=torch.float64), "dtypes differ"),
        (torch.ones(3, 4, dtype=torch.float16), torch.ones(4, 2, dtype=torch.float16), "float32 and float64"),
        (torch.ones(3, 4, dtype=torch.int64), torch.ones(4, 2, dtype=torch.int64), "float32 and float64"),
    ],
)
def test_matmul_rejects_bad_operands(a, b, message):
    with pytest.raises(ValueError, match=message):
        matmul(a, b)


def test_linear_function_rejects_bad_shapes():
    with pytest.raises(ValueError, match="in_features=6"):
        MatmulLinearFunction.apply(torch.ones(2, 5), torch.ones(3, 6), None)
    with pytest.raises(ValueError, match="bias must have shape"):
        MatmulLinearFunction.apply(torch.ones(2, 6), torch.ones(3, 6), torch.ones(4))


@pytest.mark.gpu
def test_cuda_matmul_large_and_multi_tile():
    # Many tiles in both directions plus ragged edges; fp32 on the CUDA kernel vs cuBLAS in fp32.
    # TF32 would break rtol 1e-4, so make sure the reference does not use it.
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a, b = _operands(1000, 999, 1001, torch.float32, "cuda")
        out = matmul(a, b)
        torch.testing.assert_close(out, matmul_reference(a, b), rtol=1e-4, atol=5e-4)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous

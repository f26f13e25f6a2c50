"""The cuda_matmul grader's trusted parts and its in-sandbox watchdogs, without compiling anything.

The shipped solutions (graded by ``manage.py lab check``) prove the grader end to end; these
tests pin what they cannot show cheaply: the benchmark audit's reference, the tolerance's
margins, and that run.py catches torch arithmetic inside matmul and counts matmul calls, using
fake pure-Python modules instead of a compiled extension.
"""

from __future__ import annotations

import importlib.util
import types

import pytest
import torch

from kernels import bench, guards
from labs.catalog import find_lab
from labs.trusted import CheckFailed

LAB = find_lab("cuda_matmul")
GRADER = LAB.load_grader()


def _load_run_module() -> types.ModuleType:
    """The lab's run.py, imported by path as the sandbox's harness does."""
    spec = importlib.util.spec_from_file_location("cuda_matmul_run", LAB.run_module)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUN = _load_run_module()


class FakeForbidden(Exception):
    def __init__(self, name: str):
        super().__init__(f"forbidden call: {name}()")
        self.name = name


class FakeHarness:
    """What run.py uses of the sandbox's harness for the correctness cases."""

    @staticmethod
    def forbidden(name: str) -> FakeForbidden:
        return FakeForbidden(name)


@pytest.fixture
def harness():
    return FakeHarness()


def student(source: str) -> types.ModuleType:
    module = types.ModuleType("matmul_ext")
    exec(source, module.__dict__)  # noqa: S102 - test fixtures written here
    return module


def test_cases_follow_the_catalog_contract_and_keep_answers_out_of_the_inputs():
    cpu = GRADER.cases(5, device="cpu")
    names = [c["name"] for c in cpu]
    assert names[:3] == ["matmul_1x2x3", "matmul_72x73x74", "matmul_128x128x128"]
    assert names[-1] == "benchmark"
    ragged = next(c for c in cpu if c["name"] == "matmul_ragged_shapes")
    assert [(a.shape[0], a.shape[1], b.shape[1]) for a, b in ragged["inputs"]["pairs"]] == list(GRADER.RAGGED_SHAPES)
    for case in cpu:
        assert "expected" not in case["inputs"] and "benchmark" not in case["inputs"]
    cuda = GRADER.cases(5, device="cuda")
    assert [c["name"] for c in cuda] == names  # same cases and points on both, so the same scores
    assert sum(c["points"] for c in cpu) == sum(c["points"] for c in cuda) == 100
    assert {c["inputs"].get("device") for c in cuda[:-1]} == {"cuda", "cpu"}
    shapes = cuda[-1]["benchmark"]["shapes"]
    assert shapes[GRADER.YOURS]["flops"] == 2 * 2048**3 and shapes[GRADER.CUBLAS]["inputs"][0]["shape"] == [2048, 2048]
    assert cpu[-1]["benchmark"]["shapes"][GRADER.YOURS]["flops"] == 0  # no CPU floor: the probe is noise


def test_the_audit_reference_equals_a_full_matmul_of_the_regenerated_inputs():
    case = guards.benchmark_case(name="b", seed=3, shapes=[GRADER._benchmark_shape("s", 8, "cpu")])
    shape = case["benchmark"]["shapes"]["s"]
    shape["inputs"] = [{"shape": [37, 53], "dtype": "float32"}, {"shape": [53, 29], "dtype": "float32"}]
    a, b = guards.call_inputs(shape, 4)
    full = (a.double() @ b.double()).reshape(-1)
    positions = bench.fingerprint_positions(full.numel(), shape["seed"], 4)
    # (not torch.testing.assert_close: its first call costs 9 s of imports on the CI machine)
    assert (GRADER._expected_at(shape, 4, positions) - full[positions]).abs().max().item() < 1e-12


def _sequential_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(a.shape[0], b.shape[1])
    for k in range(a.shape[1]):  # float32 accumulation, one k at a time, like a naive kernel
        out += a[:, k : k + 1] * b[k : k + 1, :]
    return out


def test_the_tolerance_passes_float32_accumulation_and_fails_half_precision_inputs():
    case = GRADER.cases(11, device="cpu")[1]  # 72x73x74
    (a, b), expected = case["inputs"]["pairs"][0], case["expected"][0]
    GRADER.check(case, [{"out": _sequential_fp32(a, b), "device": "cpu"}])
    rounded = _sequential_fp32(a.half().float(), b.half().float())
    with pytest.raises(CheckFailed, match=r"matmul of a 72x73 by a 73x74 matrix \(cpu\): max abs error"):
        GRADER.check(case, [{"out": rounded, "device": "cpu"}])
    with pytest.raises(CheckFailed, match="dtype torch.float64, expected torch.float32"):
        GRADER.check(case, [{"out": expected, "device": "cpu"}])


MATMUL_WITH_TORCH_MATH = """
import torch
def matmul(a, b):
    return (a[:, :, None] * b[None, :, :]).sum(dim=1)
"""

# Only allocation and copies inside matmul, as an extension's host code does; the "kernel" is a
# Python loop over plain floats, which no dispatch mode can see (as it cannot see C++ loops).
MATMUL_LIKE_AN_EXTENSION = """
import torch
def _kernel(a, b):
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    av, bv = a.contiguous().view(-1), b.contiguous().view(-1)
    a_list = [av[i].item() for i in range(m * k)]
    b_list = [bv[i].item() for i in range(k * n)]
    c = torch.zeros(m, n)
    for i in range(m):
        for j in range(n):
            c[i, j] = sum(a_list[i * k + p] * b_list[p * n + j] for p in range(k))
    return c
def matmul(a, b):
    return _kernel(a.detach(), b.detach())
class MatmulLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias=None):
        ctx.save_for_backward(x, weight)
        y = matmul(x, weight.t())
        return y if bias is None else y + bias
    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        grad_x = matmul(grad_output, weight)
        grad_weight = (grad_output[:, :, None] * x[:, None, :]).sum(0)  # not through matmul
        return grad_x, grad_weight, None
"""


def test_run_rejects_torch_arithmetic_inside_matmul(harness):
    inputs = {"kind": "matmul", "device": "cpu", "pairs": [(torch.randn(3, 4), torch.randn(4, 5))]}
    with pytest.raises(FakeForbidden, match=r"torch computed inside your matmul \(mul\)"):
        RUN.run(student(MATMUL_WITH_TORCH_MATH), inputs, harness)
    with pytest.raises(FakeForbidden, match=r"torch\.Tensor\.__matmul__"):
        RUN.run(student("def matmul(a, b):\n    return a @ b\n"), inputs, harness)


def test_run_lets_an_extension_like_matmul_work_and_counts_matmul_calls(harness):
    module = student(MATMUL_LIKE_AN_EXTENSION)
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    (result,) = RUN.run(module, {"kind": "matmul", "device": "cpu", "pairs": [(a, b)]}, harness)
    assert torch.allclose(result["out"], a @ b, rtol=1e-5, atol=1e-5)
    case = GRADER._linear_case("linear", 15, "cpu", torch.Generator().manual_seed(0), (4, 3), 2, bias=False)
    output = RUN.run(module, case["inputs"], harness)
    assert (output["forward_calls"], output["backward_calls"]) == (1, 1)
    assert module.matmul.__name__ == "matmul"  # the counting wrapper is gone after the case
    with pytest.raises(CheckFailed, match=r"backward called matmul 1 time\(s\)"):
        GRADER.check(case, output)

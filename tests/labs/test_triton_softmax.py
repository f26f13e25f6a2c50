"""The trusted half of the triton_softmax grader, without the sandbox: the cases it draws, the
references it checks against and the messages a student gets. The shipped solutions, graded
through the runner by ``manage.py lab check``, cover the rest."""

from __future__ import annotations

import pytest
import torch

from kernels import guards
from labs.catalog import find_lab
from labs.trusted import CheckFailed

LAB = find_lab("triton_softmax")
grader = LAB.load_grader()


def by_name(device: str = "cpu") -> dict[str, dict]:
    return {case["name"]: case for case in grader.cases(7, device=device)}


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_cases_score_out_of_100_on_every_worker_and_send_no_references(device):
    cases = grader.cases(7, device=device)
    assert len({c["name"] for c in cases}) == len(cases)
    assert sum(c["points"] for c in cases) == 100
    assert cases[-1]["name"] == "benchmark"
    assert ("bfloat16" in {c["name"] for c in cases}) == (device == "cuda")
    for case in cases[:-1]:
        assert set(case["inputs"]) <= {"kind", "x", "cols", "y", "dy"}, case["name"]


def test_forward_cases_differ_in_shape_or_dtype_so_a_cache_by_shape_meets_only_the_benchmark():
    forward = [c for c in grader.cases(7, device="cuda") if c["inputs"]["kind"] in ("forward", "autograd")]
    keys = [(tuple(c["inputs"]["x"].shape), c["inputs"].get("cols"), c["inputs"]["x"].dtype) for c in forward]
    assert len(set(keys)) == len(keys)


def test_hard_inputs_are_what_the_readme_promises():
    cases = by_name()
    assert cases["shifted_by_1000"]["inputs"]["x"].min() > 980
    for name in ("neg_inf_64x1000", "neg_inf_wide_6x20000"):
        x = cases[name]["inputs"]["x"]
        finite = torch.isfinite(x)
        assert finite.any(dim=-1).all(), f"{name}: a row without a finite entry has no defined softmax"
        assert (~finite).any(dim=-1).all(), f"{name}: every row should hold some -inf"
        assert torch.isneginf(x[1, : x.shape[1] // 2]).all()  # the long prefix that trips streamed kernels
    sliced = cases["forward_strided_64x781"]["inputs"]
    assert sliced["x"].shape == (64, 1000) and sliced["cols"] == 781


def test_a_right_forward_passes_and_a_wrong_one_gets_the_case_hint():
    case = by_name()["shifted_by_1000"]
    x = case["inputs"]["x"]
    right = torch.softmax(x, dim=-1)
    assert grader.check(case, {"out": right, "launches": 1}) is None
    overflowed = torch.exp(x) / torch.exp(x).sum(dim=-1, keepdim=True)  # inf / inf
    with pytest.raises(CheckFailed, match=r"non-finite value nan.*Subtract the row maximum"):
        grader.check(case, {"out": overflowed, "launches": 1})
    with pytest.raises(CheckFailed, match="without launching a Triton kernel"):
        grader.check(case, {"out": right, "launches": 0})


def test_the_fp32_bound_rejects_a_float16_result():
    case = by_name()["forward_1024x1000"]
    half = torch.softmax(case["inputs"]["x"], dim=-1).half().float()
    with pytest.raises(CheckFailed, match="max abs error"):
        grader.check(case, {"out": half, "launches": 1})


def test_backward_and_autograd_references():
    cases = by_name()
    case = cases["backward_37x781"]
    y, dy = case["inputs"]["y"], case["inputs"]["dy"]
    right = y * (dy - (y * dy).sum(dim=-1, keepdim=True))
    assert grader.check(case, {"out": right, "launches": 1}) is None
    with pytest.raises(CheckFailed, match="row-sum term"):
        grader.check(case, {"out": y * dy, "launches": 1})

    case = cases["autograd_4x8x781"]
    x = case["inputs"]["x"].clone().requires_grad_(True)
    y = torch.softmax(x, dim=-1)
    y.backward(case["inputs"]["dy"])
    output = {"y": y.detach(), "grad": x.grad, "forward_launches": 1, "backward_launches": 1}
    assert grader.check(case, output) is None
    with pytest.raises(CheckFailed, match="left x.grad empty"):
        grader.check(case, {**output, "grad": None})
    with pytest.raises(CheckFailed, match="TritonSoftmax.backward"):
        grader.check(case, {**output, "backward_launches": 0})


def test_the_benchmark_audit_rebuilds_the_rows_it_needs():
    case = by_name()["benchmark"]
    for shape in case["benchmark"]["shapes"].values():
        rows, cols = shape["inputs"][0]["shape"]
        (x,) = guards.call_inputs(shape, 3)
        positions = torch.tensor([0, cols - 1, cols, rows * cols - 1, (rows - 1) * cols + 17])
        expected = torch.softmax(x.double(), dim=-1).reshape(-1)[positions]
        assert torch.equal(grader._expected_at(shape, 3, positions), expected)

"""The trusted half of the ring_allreduce grader, without the sandbox: the cases it generates and
what check() says about outputs shaped like run()'s. The shipped solutions, graded through the
real runner by tests/labs/test_lab_check.py, prove the sandbox half."""

from __future__ import annotations

import pytest
import torch

from labs.catalog import find_lab
from labs.grading import CheckFailed

LAB = find_lab("ring_allreduce")
GRADER = LAB.load_grader()


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return GRADER.cases(20_260_101)


def by_name(cases: list[dict], name: str) -> dict:
    return next(case for case in cases if case["name"] == name)


def rank_inputs(spec_run: dict, rank: int) -> list[torch.Tensor]:
    """What a rank that drew seed 100 + rank passed to the student, test after test."""
    return GRADER._rank_inputs([test["tensors"][rank] for test in spec_run["tests"]], 100 + rank)


def correct_result(op: str, tensors: list[torch.Tensor], rank: int) -> dict:
    """What a correct solution's rank sends back for one test, with the ring's byte count."""
    p = len(tensors)
    if op == "allgather":
        value, numel = torch.cat(tensors), sum(t.numel() for t in tensors)
    else:
        total = torch.stack([t.double() for t in tensors]).sum(0).to(tensors[0].dtype)
        if tensors[0].dtype == torch.int64:
            total = torch.stack(tensors).sum(0)
        value = total if op == "allreduce" else torch.tensor_split(total, p)[rank].clone()
        numel = tensors[0].numel()
    phases = 2 if op == "allreduce" else 1
    return {"value": value, "returned": "t", "bytes": int(phases * (p - 1) / p * numel * tensors[0].element_size())}


def correct_output(case: dict) -> dict:
    runs = []
    for spec_run in case["inputs"]["runs"]:
        p = spec_run["world_size"]
        inputs = [rank_inputs(spec_run, rank) for rank in range(p)]
        ranks = []
        for rank in range(p):
            tests = [
                correct_result(test["op"], [inputs[r][index] for r in range(p)], rank)
                for index, test in enumerate(spec_run["tests"])
            ]
            ranks.append({"seed": 100 + rank, "tests": tests})
        runs.append(ranks)
    return {"runs": runs}


def test_cases_follow_the_catalog_and_keep_answers_out_of_the_inputs(cases):
    names = [case["name"] for case in cases]
    assert names[-1] == "benchmark" and cases[-1]["points"] == 0 and len(set(names)) == len(names)
    assert sum(case["points"] for case in cases) == 100
    world_sizes = {run["world_size"] for case in cases[:-1] for run in case["inputs"]["runs"]}
    assert world_sizes == {2, 3, 4} and LAB.world_size == 4
    sizes = {t["tensors"][0].numel() for case in cases[:-1] for run in case["inputs"]["runs"] for t in run["tests"]}
    assert {1, 7, 1_000_000} <= sizes
    assert all(
        set(case["inputs"])
        <= {
            "kind",
            "label",
            "runs",
            "timeout",
            "world_size",
            "tensors",
            "min_rounds",
            "max_rounds",
            "cap_seconds",
            "samples",
        }
        for case in cases
    )
    assert "torch.distributed.all_reduce" in LAB.forbidden
    assert "torch.distributed.distributed_c10d.all_reduce" in LAB.forbidden


def test_each_rank_flips_its_own_signs_so_peers_cannot_read_its_inputs(cases):
    spec_run = by_name(cases, "allreduce_3_ranks")["inputs"]["runs"][0]
    base = spec_run["tests"][4]["tensors"][0]  # int64
    flipped = rank_inputs(spec_run, 0)[4]
    assert flipped.dtype == torch.int64 and torch.equal(flipped.abs(), base.abs())
    assert not torch.equal(flipped, base) and not torch.equal(flipped, rank_inputs(spec_run, 1)[4])
    assert torch.equal(flipped, rank_inputs(spec_run, 0)[4])  # the seed rebuilds them exactly


def test_a_correct_output_passes_every_correctness_case(cases):
    for case in cases[:-1]:
        assert GRADER.check(case, correct_output(case)) is None, case["name"]


def test_a_lost_remainder_names_the_elements_and_the_split(cases):
    case = by_name(cases, "allreduce_2_ranks")
    output = correct_output(case)
    wrong = output["runs"][0][1]["tests"][1]  # rank 1, 7 float64 elements: the last one never reduced
    wrong["value"] = wrong["value"].clone()
    wrong["value"][6] = rank_inputs(case["inputs"]["runs"][0], 1)[1][6]
    with pytest.raises(CheckFailed) as failure:
        GRADER.check(case, output)
    message = str(failure.value)
    assert "ring_allreduce on 2 ranks, 7 float64 elements, rank 1: element 6 is" in message
    assert "1 of 7 elements are wrong" in message and "torch.tensor_split" in message


def test_rounding_errors_are_called_lower_precision(cases):
    case = by_name(cases, "allreduce_2_ranks")
    output = correct_output(case)
    for rank in range(2):
        result = output["runs"][0][rank]["tests"][3]  # 1000 float32 elements
        result["value"] = result["value"].to(torch.bfloat16).to(torch.float32)
    with pytest.raises(CheckFailed, match="mean lower precision somewhere on the way"):
        GRADER.check(case, output)


def test_ranks_that_round_differently_fail_only_the_identity_check(cases):
    case = by_name(cases, "identical_on_all_ranks")
    output = correct_output(case)
    result = output["runs"][0][2]["tests"][0]  # rank 2, float32: one ulp off in one element, still within tolerance
    value = result["value"].clone()
    value[5] = torch.nextafter(value[5], torch.tensor(float("inf")))
    result["value"] = value
    with pytest.raises(CheckFailed, match="rank 2's result differs from rank 0's in 1 of 1003 elements"):
        GRADER.check(case, output)
    without_identity = {**case, "identical": False}
    assert GRADER.check(without_identity, output) is None


def test_gathering_on_one_rank_sends_too_many_bytes(cases):
    case = by_name(cases, "bytes_sent")
    output = correct_output(case)
    n = 100_003
    for rank in range(4):  # rank 0 broadcasts the sum: (p-1) * N elements; the others send N
        output["runs"][0][rank]["tests"][0]["bytes"] = (3 * n if rank == 0 else n) * 4
    with pytest.raises(CheckFailed) as failure:
        GRADER.check(case, output)
    assert "rank 0 sent 1,200,036 bytes, 2.00x the ring's 2(p-1)/p*N*4 = 600,018 bytes" in str(failure.value)
    output["runs"][0][0]["tests"][0]["bytes"] = int(600_018 * 1.05)  # within the allowance
    for rank in range(1, 4):
        output["runs"][0][rank]["tests"][0]["bytes"] = 600_018
    assert GRADER.check(case, output) is None


def test_a_new_tensor_instead_of_an_in_place_sum_is_named(cases):
    case = by_name(cases, "allreduce_2_ranks")
    output = correct_output(case)
    result = output["runs"][0][0]["tests"][0]
    t = rank_inputs(case["inputs"]["runs"][0], 0)[0]
    result.update(value=t.clone(), returned="another tensor", returned_value=result["value"])
    with pytest.raises(CheckFailed, match="t is unchanged and ring_allreduce returned another tensor"):
        GRADER.check(case, output)


@pytest.fixture(scope="module")
def bench_case(cases) -> dict:
    """The benchmark case cut to 1,003 elements per rank: check() takes the size from the inputs."""
    case = cases[-1]
    return {**case, "inputs": {**case["inputs"], "tensors": [t[:1003].clone() for t in case["inputs"]["tensors"]]}}


def benchmark_output(case: dict, student: float, gloo: float, rounds: int = 5) -> dict:
    tensors = case["inputs"]["tensors"]
    inputs = [GRADER._rank_inputs([t], 100 + rank)[0] for rank, t in enumerate(tensors)]
    total = torch.stack([t.double() for t in inputs]).sum(0).to(torch.float32)
    ranks = []
    for rank in range(len(tensors)):
        result = {key: [] for key in ("student_s", "gloo_s", "bytes", "shift", "bits", "positions", "samples", "sum")}
        result["seed"] = 100 + rank
        for shift in range(1, rounds + 1):
            positions = torch.tensor([0, 17, 1002])
            rolled = torch.roll(total, shift)
            result["student_s"].append(student)
            result["gloo_s"].append(gloo)
            result["bytes"].append(6018)
            result["shift"].append(shift)
            result["bits"].append(int(rolled.view(torch.int32).sum()))
            result["positions"].append(positions)
            result["samples"].append(rolled[positions].clone())
            result["sum"].append(rolled.double().sum().item())
        ranks.append(result)
    return {"ranks": ranks}


def test_the_benchmark_reports_the_median_ratio_and_the_bytes(bench_case):
    output = benchmark_output(bench_case, student=0.06, gloo=0.04)
    verdict = GRADER.check({**bench_case, "runtime": {"envelopes": {"allreduce": 0.6}}}, output)
    assert verdict["metric"] == pytest.approx(1.5)
    assert "1.00x the ring's 2(p-1)/p*N*4 B = 0.01 MB" in verdict["message"]


def test_the_benchmark_refuses_times_the_worker_clock_contradicts(bench_case):
    output = benchmark_output(bench_case, student=0.0001, gloo=0.04)  # a clock stopped during the student's calls
    with pytest.raises(CheckFailed, match="the clock was tampered with"):
        GRADER.check({**bench_case, "runtime": {"envelopes": {"allreduce": 2.0}}}, output)
    with pytest.raises(CheckFailed, match="did not see the timed region"):
        GRADER.check({**bench_case, "runtime": {"envelopes": {}}}, output)


def test_the_benchmark_checks_every_timed_output(bench_case):
    output = benchmark_output(bench_case, student=0.06, gloo=0.04)
    output["ranks"][3]["samples"][2] = output["ranks"][3]["samples"][2] + 1.0
    with pytest.raises(CheckFailed, match="timed call 3: rank 3's result is wrong"):
        GRADER.check({**bench_case, "runtime": {"envelopes": {"allreduce": 0.6}}}, output)

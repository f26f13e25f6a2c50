"""The trusted half of the ring_allreduce grader, without the sandbox: the cases it generates and
what check() says about outputs shaped like run.py's (one entry per rank), the worker's byte
count, and the timed benchmark's check of the worker's times and fingerprints. The shipped
solutions, graded through the real runner by tests/labs/test_lab_check.py, prove the sandbox half."""

from __future__ import annotations

import pytest
import torch

from labs.catalog import find_lab
from labs.trusted import CheckFailed

LAB = find_lab("ring_allreduce")
GRADER = LAB.load_grader()


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return GRADER.cases(20_260_101)


def by_name(cases: list[dict], name: str) -> dict:
    return next(case for case in cases if case["name"] == name)


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


def correct_output(case: dict) -> list[dict]:
    """Every rank's output for the case, as run.py returns it, and the worker's network count."""
    p = case["world_size"]
    output = [
        {"tests": [correct_result(test["op"], test["tensors"], rank) for test in case["tests"]]} for rank in range(p)
    ]
    by_rank = [int(sum(result["bytes"] for result in rank_output["tests"]) * 1.01) for rank_output in output]
    case["runtime"] = {"network_bytes": sum(by_rank), "network_bytes_by_rank": by_rank, "meters": {}, "world_size": p}
    return output


def test_cases_are_distributed_with_each_rank_getting_only_its_own_tensors(cases):
    names = [case["name"] for case in cases]
    assert names[-1] == "benchmark" and cases[-1]["points"] == 0 and len(set(names)) == len(names)
    assert sum(case["points"] for case in cases) == 100
    sizes = [case["world_size"] for case in cases[:-1]]
    assert sizes == sorted(sizes) and set(sizes) == {2, 3, 4} and LAB.world_size == 4  # one group per size
    for case in cases[:-1]:
        assert len(case["inputs"]) == case["world_size"]
        for rank, rank_inputs in enumerate(case["inputs"]):
            for test, sent in zip(case["tests"], rank_inputs["tests"], strict=True):
                assert set(sent) == {"op", "what", "tensor"} and torch.equal(sent["tensor"], test["tensors"][rank])
    numels = {t["tensors"][0].numel() for case in cases[:-1] for t in case["tests"]}
    assert {1, 7, 1_000_000} <= numels
    assert "torch.distributed.all_reduce" in LAB.forbidden
    assert "torch.distributed.distributed_c10d.all_reduce" in LAB.forbidden


def test_the_benchmark_is_a_distributed_timed_case_against_gloo_with_fresh_tensors_per_rank_and_call(cases):
    case = cases[-1]
    assert case["inputs"] == {"kind": "benchmark", "numel": 1_000_003}  # nothing secret: every call sees it
    timed = case["timed"]
    assert timed["reference"] and timed["world_size"] == 4 and timed["calls"] >= 10
    assert timed["outputs"] == {"out": [1_000_003]}
    first, second = GRADER.call_inputs(case, 1), GRADER.call_inputs(case, 2)
    assert len(first) == 4 and first[0]["x"].shape == (1_000_003,) and first[0]["x"].dtype == torch.float32
    assert not torch.equal(first[0]["x"], first[1]["x"]) and not torch.equal(first[0]["x"], second[0]["x"])
    assert torch.equal(first[3]["x"], GRADER.call_inputs(case, 1)[3]["x"])
    assert LAB.reference_module is not None


def test_a_correct_output_passes_every_correctness_case(cases):
    for case in cases[:-1]:
        case = dict(case)
        assert GRADER.check(case, correct_output(case)) is None, case["name"]


def test_a_lost_remainder_names_the_elements_and_the_split(cases):
    case = dict(by_name(cases, "allreduce_2_ranks"))
    output = correct_output(case)
    wrong = output[1]["tests"][1]  # rank 1, 7 float64 elements: the last one never reduced
    wrong["value"] = wrong["value"].clone()
    wrong["value"][6] = case["tests"][1]["tensors"][1][6]
    with pytest.raises(CheckFailed) as failure:
        GRADER.check(case, output)
    message = str(failure.value)
    assert "ring_allreduce on 2 ranks, 7 float64 elements, rank 1: element 6 is" in message
    assert "1 of 7 elements are wrong" in message and "torch.tensor_split" in message


def test_rounding_errors_are_called_lower_precision(cases):
    case = dict(by_name(cases, "allreduce_2_ranks"))
    output = correct_output(case)
    for rank in range(2):
        result = output[rank]["tests"][3]  # 1000 float32 elements
        result["value"] = result["value"].to(torch.bfloat16).to(torch.float32)
    with pytest.raises(CheckFailed, match="mean lower precision somewhere on the way"):
        GRADER.check(case, output)


def test_ranks_that_round_differently_fail_only_the_identity_check(cases):
    case = dict(by_name(cases, "identical_on_3_ranks"))
    output = correct_output(case)
    result = output[2]["tests"][0]  # rank 2, float32: one ulp off in one element, still within tolerance
    value = result["value"].clone()
    value[5] = torch.nextafter(value[5], torch.tensor(float("inf")))
    result["value"] = value
    with pytest.raises(CheckFailed, match="rank 2's result differs from rank 0's in 1 of 1003 elements"):
        GRADER.check(case, output)
    without_identity = {**case, "identical": False}
    assert GRADER.check(without_identity, output) is None


def test_gathering_on_one_rank_sends_too_many_bytes(cases):
    case = dict(by_name(cases, "bytes_sent"))
    output = correct_output(case)
    n = 100_003
    for rank in range(4):  # rank 0 broadcasts the sum: (p-1) * N elements; the others send N
        output[rank]["tests"][0]["bytes"] = (3 * n if rank == 0 else n) * 4
    with pytest.raises(CheckFailed) as failure:
        GRADER.check(case, output)
    assert "rank 0 sent 1,200,036 bytes, 2.00x the ring's 2(p-1)/p*N*4 = 600,018 bytes" in str(failure.value)
    output[0]["tests"][0]["bytes"] = int(600_018 * 1.05)  # within the allowance
    for rank in range(1, 4):
        output[rank]["tests"][0]["bytes"] = 600_018
    assert GRADER.check(case, output) is None


def test_the_workers_network_count_bounds_the_case_whatever_the_ranks_report(cases):
    case = dict(by_name(cases, "bytes_sent"))
    output = correct_output(case)  # every rank reports the ring's bytes
    ideal = 4 * (600_018 + 300_009 + 300_009)  # all-reduce, reduce-scatter, all-gather of 4 x 25,001
    case["runtime"] = {**case["runtime"], "network_bytes": 2 * ideal}
    with pytest.raises(CheckFailed, match=r"the 4 ranks sent each other 9,600,288 bytes over the network"):
        GRADER.check(case, output)
    case["runtime"] = {**case["runtime"], "network_bytes": int(ideal * 1.04)}  # headers, barriers
    assert GRADER.check(case, output) is None
    # The same total, but rank 0 sends three quarters of it: the worker's per-rank count says so.
    case["runtime"] = {**case["runtime"], "network_bytes_by_rank": [3 * ideal // 4] + [ideal // 12] * 3}
    with pytest.raises(CheckFailed, match=r"rank 0 sent 3,600,108 bytes over the network in this case, 3.00x"):
        GRADER.check(case, output)


def test_a_new_tensor_instead_of_an_in_place_sum_is_named(cases):
    case = dict(by_name(cases, "allreduce_2_ranks"))
    output = correct_output(case)
    result = output[0]["tests"][0]
    t = case["tests"][0]["tensors"][0]
    result.update(value=t.clone(), returned="another tensor", returned_value=result["value"])
    with pytest.raises(CheckFailed, match="t is unchanged and ring_allreduce returned another tensor"):
        GRADER.check(case, output)


SMALL = 1003  # the benchmark's check takes the size from the case: a small one keeps these tests fast


def bench_case(cases, *, calls: int = 4, student: float = 0.03, gloo: float = 0.02) -> dict:
    """The benchmark case as check() gets it after the timing phase, on SMALL elements per rank."""
    case = {**cases[-1], "inputs": {**cases[-1]["inputs"], "numel": SMALL}}
    gen = torch.Generator().manual_seed(5)
    case["runtime"] = {
        "seconds": [student] * calls,
        "reference_seconds": [gloo] * calls,
        "inputs": [GRADER.call_inputs(case, seed) for seed in range(calls)],
        "probes": {"out": torch.randn(SMALL, generator=gen, dtype=torch.float64)},
        "frozen": True,
        "network_bytes": [2 * 3 * SMALL * 4] * calls,
    }
    return case


def fingerprints(case: dict) -> dict:
    """What an honest student's ranks report: each rank's result dotted with the probe."""
    runtime, calls = case["runtime"], []
    for inputs in runtime["inputs"]:
        total = sum(rank_inputs["x"] for rank_inputs in inputs)  # float32, in some order
        value = float(torch.dot(total.double(), runtime["probes"]["out"]))
        calls.append({f"out@{rank}": value for rank in range(4)})
    return {"calls": calls}


def test_the_benchmark_ranks_the_median_ratio_to_gloo_on_the_workers_clock(cases):
    case = bench_case(cases)
    case["runtime"]["seconds"] = [0.03, 0.09, 0.03, 0.03]
    verdict = GRADER.check(case, fingerprints(case))
    assert verdict["metric"] == pytest.approx(1.5)
    assert "ring_allreduce on 4 ranks, 1,003 float32 elements, against gloo's all_reduce" in verdict["message"]
    assert "the reference timed in a separate clean process" in verdict["message"]


def test_a_rank_that_returns_only_its_own_tensor_fails_its_timed_call(cases):
    case = bench_case(cases)
    output = fingerprints(case)
    own = case["runtime"]["inputs"][2][0]["x"]  # all a rank that skips the messages has
    output["calls"][2]["out@0"] = float(torch.dot(own.double(), case["runtime"]["probes"]["out"]))
    with pytest.raises(CheckFailed, match="ring_allreduce in timed call 3 of 4 returned a wrong 'out@0'"):
        GRADER.check(case, output)


def test_the_timed_calls_must_be_bit_identical_on_every_rank(cases):
    case = bench_case(cases)
    output = fingerprints(case)
    value = output["calls"][1]["out@2"]
    output["calls"][1]["out@2"] = value + abs(value) * 1e-12  # within the fingerprint's rounding allowance
    with pytest.raises(CheckFailed, match="timed call 2: the ranks' results are not bit-identical"):
        GRADER.check(case, output)

"""The trusted half of the ring_allreduce grader, without the sandbox: the cases it generates and
what check() says about outputs shaped like run.py's, and the timed benchmark's check of the
worker's times and fingerprints. The shipped solutions, graded through the real runner by
tests/labs/test_lab_check.py, prove the sandbox half."""

from __future__ import annotations

import ast
import sys

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
    assert all(set(case["inputs"]) == {"kind", "label", "runs", "timeout"} for case in cases[:-1])
    assert "torch.distributed.all_reduce" in LAB.forbidden
    assert "torch.distributed.distributed_c10d.all_reduce" in LAB.forbidden


def test_the_benchmark_is_a_distributed_timed_case_against_gloo_with_fresh_tensors_per_call(cases):
    case = cases[-1]
    assert case["inputs"] == {"kind": "benchmark", "numel": 1_000_003}  # nothing secret: every call sees it
    timed = case["timed"]
    assert timed["reference"] and timed["world_size"] == 4 and timed["calls"] >= 10
    assert timed["outputs"] == {"out": [1_000_003], "shift": [1]}
    first, second = GRADER.call_inputs(case, 1), GRADER.call_inputs(case, 2)
    assert first["x"].shape == (4, 1_000_003) and first["x"].dtype == torch.float32
    assert not torch.equal(first["x"], second["x"]) and torch.equal(first["x"], GRADER.call_inputs(case, 1)["x"])
    assert LAB.reference_module is not None


# What run.py may import in the sandbox (docs/authoring-labs.md, lab contract v2): the standard
# library, torch, numpy and the runner's lib/ (kernels.bench, labs.sandboxed, labs.ranks).
SANDBOX_IMPORTS = ("__future__", "torch", "numpy", "kernels.bench", "labs.sandboxed", "labs.ranks")


@pytest.mark.parametrize("name", ["run.py", "reference.py"])
def test_run_py_and_reference_py_are_modules_that_import_only_what_the_sandbox_ships(name):
    tree = ast.parse((LAB.path / name).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for imported in names:
            allowed = imported.partition(".")[0] in sys.stdlib_module_names or any(
                imported == prefix or imported.startswith(prefix + ".") for prefix in SANDBOX_IMPORTS
            )
            assert allowed, imported
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert functions >= ({"run", "timed"} if name == "run.py" else {"ring_allreduce"})
    calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not calls & {"exec", "eval", "globals"}


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


SMALL = 1003  # the benchmark's check takes the size from the case: a small one keeps these tests fast


def bench_case(cases, *, calls: int = 4, student: float = 0.03, gloo: float = 0.02) -> dict:
    """The benchmark case as check() gets it after the timing phase, on SMALL elements per rank."""
    case = {**cases[-1], "inputs": {**cases[-1]["inputs"], "numel": SMALL}}
    gen = torch.Generator().manual_seed(5)
    case["runtime"] = {
        "seconds": [student] * calls,
        "reference_seconds": [gloo] * calls,
        "inputs": [GRADER.call_inputs(case, seed) for seed in range(calls)],
        "probes": {"out": torch.randn(SMALL, generator=gen, dtype=torch.float64), "shift": torch.tensor([0.37])},
        "frozen": True,
    }
    return case


def fingerprints(case: dict, shifts: list[list[int]]) -> dict:
    """What an honest student's ranks report: each rank's result and its shift, dotted with the probes."""
    runtime, calls = case["runtime"], []
    for inputs, call_shifts in zip(runtime["inputs"], shifts, strict=True):
        x = inputs["x"]
        total = sum(torch.roll(x[r], s) for r, s in enumerate(call_shifts))  # float32, in some order
        fingerprint = {}
        for rank, shift in enumerate(call_shifts):
            fingerprint[f"out@{rank}"] = float(torch.dot(total.double(), runtime["probes"]["out"]))
            fingerprint[f"shift@{rank}"] = float(shift * runtime["probes"]["shift"][0])
        calls.append(fingerprint)
    return {"calls": calls}


SHIFTS = [[0, 5, 17, 1002], [3, 3, 3, 3], [999, 1, 0, 500], [7, 8, 9, 10]]


def test_the_benchmark_ranks_the_median_ratio_to_gloo_on_the_workers_clock(cases):
    case = bench_case(cases)
    case["runtime"]["seconds"] = [0.03, 0.09, 0.03, 0.03]
    verdict = GRADER.check(case, fingerprints(case, SHIFTS))
    assert verdict["metric"] == pytest.approx(1.5)
    assert "ring_allreduce on 4 ranks, 1,003 float32 elements, against gloo's all_reduce" in verdict["message"]
    assert "the reference timed in a separate clean process" in verdict["message"]


def test_a_rank_that_adds_up_the_plain_rows_instead_of_receiving_fails_its_timed_call(cases):
    case = bench_case(cases)
    output = fingerprints(case, SHIFTS)
    plain = case["runtime"]["inputs"][2]["x"].sum(0)  # what reading the call's inputs gives
    for rank in range(4):
        output["calls"][2][f"out@{rank}"] = float(torch.dot(plain.double(), case["runtime"]["probes"]["out"]))
    with pytest.raises(CheckFailed, match="ring_allreduce in timed call 3 of 4 returned a wrong 'out@0'"):
        GRADER.check(case, output)


def test_the_timed_calls_must_be_bit_identical_on_every_rank(cases):
    case = bench_case(cases)
    output = fingerprints(case, SHIFTS)
    value = output["calls"][1]["out@2"]
    output["calls"][1]["out@2"] = value + abs(value) * 1e-12  # within the fingerprint's rounding allowance
    with pytest.raises(CheckFailed, match="timed call 2: the ranks' results are not bit-identical"):
        GRADER.check(case, output)


@pytest.mark.parametrize("shift", [None, 0.5, -1.0, float(SMALL)])
def test_a_rotation_the_grader_cannot_read_back_is_malformed(cases, shift):
    case = bench_case(cases)
    output = fingerprints(case, SHIFTS)
    output["calls"][0]["shift@1"] = None if shift is None else shift * 0.37
    with pytest.raises(CheckFailed, match="timed call 1: rank 1 reported no usable rotation"):
        GRADER.check(case, output)

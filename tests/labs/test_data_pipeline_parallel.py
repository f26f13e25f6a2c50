"""The trusted half of the data_pipeline_parallel grader: its references and its benchmark's check.

The shipped solutions (graded by tests/labs/test_lab_check.py) prove the checks catch each
mistake; these tests pin what the solutions cannot: that the references are single-process
PyTorch, that the bucket rule is the README's, and how the benchmark turns the worker's times
into step / ideal and checks every timed call's loss and gradients.
"""

from __future__ import annotations

import ast
import sys

import pytest
import torch
import torch.nn.functional as F

from labs.catalog import find_lab
from labs.trusted import CheckFailed

LAB = find_lab("data_pipeline_parallel")
GRADER = LAB.load_grader()


@pytest.fixture(scope="module")
def cases() -> dict[str, dict]:
    return {case["name"]: case for case in GRADER.cases(7)}


def test_buckets_follow_the_readme_example():
    numels = [2560, 40, 1280, 32, 768, 24, 384, 16, 160, 10]
    buckets = GRADER._buckets(numels, 0.008)
    sizes = [[numels[i] for i in bucket] for bucket in buckets]
    assert sizes == [[10, 160, 16, 384, 24], [768, 32], [1280], [40], [2560]]
    assert GRADER._buckets(numels, 25) == [list(reversed(range(len(numels))))]  # the default: one bucket


def test_bucket_cases_expect_the_readme_buckets(cases):
    for name in ("ddp_buckets", "ddp_overlap"):
        assert cases[name]["bucket_numels"] == [594, 800, 1280, 40, 2560]
        assert cases[name]["launchable_early"] == 3


def test_the_sgd_reference_is_torch_sgd_with_momentum():
    torch.manual_seed(0)
    model = GRADER._mlp([6, 5, 3])
    twin = GRADER._mlp([6, 5, 3])
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    params, buffers = list(model.parameters()), [None] * 4
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        GRADER._sgd_step(params, buffers, 0.1, 0.9)
        optimizer.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        optimizer.step()
    for mine, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


def test_the_pipeline_reference_is_the_full_batch_loss_and_gradient(cases):
    inputs = cases["gpipe_3_ranks"]["inputs"]
    widths, stages = inputs["widths"], inputs["stages"]
    modules = [GRADER._load(GRADER._stage(widths, ids), w) for ids, w in zip(stages, inputs["weights"], strict=True)]
    model = torch.nn.Sequential(*modules)
    x, y = inputs["x"].reshape(-1, widths[0]), inputs["y"].reshape(-1, widths[-1])
    loss = F.mse_loss(model(x), y)
    loss.backward()
    assert cases["gpipe_3_ranks"]["expected_loss"] == pytest.approx(loss.item(), rel=1e-12)
    for module, expected in zip(modules, cases["gpipe_3_ranks"]["expected_grads"], strict=True):
        for p, grad in zip(module.parameters(), expected, strict=True):
            torch.testing.assert_close(grad, p.grad, rtol=1e-10, atol=1e-14)


def _timed_case(cases: dict, steps: list[float], refs: list[float]) -> dict:
    """The benchmark case as check() gets it after the timing phase."""
    case = cases["pipeline_benchmark"]
    shapes = case["timed"]["outputs"]
    gen = torch.Generator().manual_seed(3)
    probes = {name: torch.randn(shape, generator=gen, dtype=torch.float64) for name, shape in shapes.items()}
    inputs = [GRADER.call_inputs(case, seed) for seed in range(len(steps))]
    runtime = {"seconds": steps, "reference_seconds": refs, "inputs": inputs, "probes": probes, "frozen": True}
    return {**case, "runtime": runtime}


def _honest_fingerprints(case: dict) -> dict:
    """What an honest student's ranks report: each output dotted with its probe (the reference's)."""
    probes, calls = case["runtime"]["probes"], []
    for inputs in case["runtime"]["inputs"]:
        expected = GRADER._timed_expected(case, inputs)
        calls.append(
            {k: float(torch.dot(v.reshape(-1), probes[k.partition("@")[0]].reshape(-1))) for k, v in expected.items()}
        )
    return {"calls": calls}


def test_the_benchmark_is_a_distributed_timed_case_against_the_ideal_in_a_clean_process(cases):
    case = cases["pipeline_benchmark"]
    timed = case["timed"]
    assert timed["reference"] and timed["world_size"] == 2 and timed["calls"] >= 10
    assert set(timed["outputs"]) == {"grad_0.weight", "grad_0.bias", "grad_2.weight", "grad_2.bias", "loss"}
    first, second = GRADER.call_inputs(case, 1), GRADER.call_inputs(case, 2)
    assert first["x"].shape == (8, 32, 256) and first["y"].shape == (8, 32, 256)
    assert not torch.equal(first["x"], second["x"])  # fresh microbatches for every call
    assert "x" not in case["inputs"] and LAB.reference_module is not None


def test_the_timed_calls_expect_the_sequential_models_loss_and_gradients(cases):
    case = cases["pipeline_benchmark"]
    inputs = GRADER.call_inputs(case, 5)
    expected = GRADER._timed_expected(case, inputs)
    static = case["inputs"]
    modules = [
        GRADER._load(GRADER._stage(static["widths"], ids), w)
        for ids, w in zip(static["stages"], static["weights"], strict=True)
    ]
    model = torch.nn.Sequential(*modules)
    loss = F.mse_loss(model(inputs["x"].reshape(-1, 256)), inputs["y"].reshape(-1, 256))
    loss.backward()
    assert expected["loss@1"].item() == pytest.approx(loss.item(), rel=1e-12) and expected["loss@0"].item() == 0.0
    torch.testing.assert_close(expected["grad_2.weight@1"], modules[1][2].weight.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(expected["grad_0.bias@0"], modules[0][0].bias.grad, rtol=1e-10, atol=1e-14)


def test_the_benchmark_ranks_the_median_ratio_to_the_ideal(cases):
    steps, refs = [0.09, 0.10, 0.20, 0.09, 0.11], [0.08] * 5  # ideal = 9/8 x 0.08 = 0.09
    case = _timed_case(cases, steps, refs)
    verdict = GRADER.check(case, _honest_fingerprints(case))
    assert verdict["metric"] == pytest.approx(0.10 / 0.09)
    assert "step / ideal = 1.111" in verdict["message"]
    assert "the reference timed in a separate clean process" in verdict["message"]


def test_the_benchmark_does_not_rank_a_step_faster_than_its_compute(cases):
    case = _timed_case(cases, [0.01] * 5, [0.08] * 5)
    verdict = GRADER.check(case, _honest_fingerprints(case))
    assert "metric" not in verdict and "not ranked" in verdict["message"]


def test_the_benchmark_checks_every_timed_loss_and_gradient(cases):
    case = _timed_case(cases, [0.1] * 5, [0.08] * 5)
    output = _honest_fingerprints(case)
    output["calls"][3]["loss@1"] *= 1.001
    with pytest.raises(CheckFailed, match="gpipe_step in timed call 4 of 5 returned a wrong 'loss@1'"):
        GRADER.check(case, output)
    output = _honest_fingerprints(case)
    output["calls"][1]["grad_0.weight@0"] *= 1.0001
    with pytest.raises(CheckFailed, match="timed call 2 of 5 returned a wrong 'grad_0.weight@0'"):
        GRADER.check(case, output)


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
    assert functions >= ({"run", "timed"} if name == "run.py" else {"gpipe_step"})
    calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not calls & {"exec", "eval", "globals"}

"""The trusted half of the data_pipeline_parallel grader: its references, its cases and its checks.

The shipped solutions (graded by tests/labs/test_lab_check.py) prove the checks catch each
mistake; these tests pin what the solutions cannot: that the references are single-process
PyTorch, that the bucket rule is the README's, that every case is a distributed case in which each
rank gets only its own data, how ``check`` reads the list of the ranks' outputs, and how the
benchmark turns the worker's times into step / ideal and checks every timed call's loss and
gradients.
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
    case = cases["gpipe_3_ranks"]
    widths, stages, ranks = case["widths"], case["stages"], case["inputs"]
    weights = [inputs["weights"] for inputs in ranks]
    modules = [GRADER._load(GRADER._stage(widths, ids), w) for ids, w in zip(stages, weights, strict=True)]
    model = torch.nn.Sequential(*modules)
    x, y = ranks[0]["x"].reshape(-1, widths[0]), ranks[-1]["y"].reshape(-1, widths[-1])
    loss = F.mse_loss(model(x), y)
    loss.backward()
    assert cases["gpipe_3_ranks"]["expected_loss"] == pytest.approx(loss.item(), rel=1e-12)
    for module, expected in zip(modules, cases["gpipe_3_ranks"]["expected_grads"], strict=True):
        for p, grad in zip(module.parameters(), expected, strict=True):
            torch.testing.assert_close(grad, p.grad, rtol=1e-10, atol=1e-14)


def _own_storage(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` carries nothing but itself when saved (a view would carry its base)."""
    return tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_every_correctness_case_is_a_distributed_case_grouped_by_world_size(cases):
    names = list(cases)
    assert names[-1] == "pipeline_benchmark" and "world_size" not in cases["pipeline_benchmark"]
    sizes = [cases[name]["world_size"] for name in names[:-1]]
    assert sizes == [2, 2, 2, 2, 4, 3, 3, 3, 4]  # 4 groups of ranks; the cases that can hang come last
    assert names[-3:-1] == ["gpipe_3_ranks", "gpipe_4_ranks_3_microbatches"]
    for name in names[:-1]:
        case = cases[name]
        assert isinstance(case["inputs"], list) and len(case["inputs"]) == case["world_size"], name
        assert 0 < case["timeout"] <= 30, name
        assert all(inputs["kind"] == case["kind"] for inputs in case["inputs"]), name
        hang = case["hints"]["hang"]  # the worker adds it to a hang's message
        assert ("recv" in hang) == (case["kind"] == "gpipe") and "SIGABRT" in case["hints"], name


def test_each_data_parallel_rank_gets_only_its_own_weights_and_rows(cases):
    for name in ("ddp_broadcast_init", "ddp_train_2_ranks", "ddp_train_4_ranks_small_buckets", "ddp_overlap"):
        ranks = cases[name]["inputs"]
        for rank, inputs in enumerate(ranks):
            assert all(_own_storage(t) for t in [*inputs["init"], inputs["x"]]), name
            if rank:  # each rank initialises its model differently: only a broadcast makes them equal
                assert not torch.equal(inputs["init"][0], ranks[0]["init"][0]), name
    train = cases["ddp_train_4_ranks_small_buckets"]["inputs"]
    assert [inputs["x"].shape for inputs in train] == [(5, 12, 64)] * 4  # 12 of 48 rows per step each
    assert train[0]["bucket_cap_mb"] == 0.01 and cases["ddp_train_2_ranks"]["inputs"][1]["bucket_cap_mb"] is None
    # The ranks' rows are the global batch, in rank order: the reference trains on all of them.
    x = torch.cat([inputs["x"] for inputs in train], dim=1)
    assert x.shape == (5, 48, 64) and len({tuple(row.tolist()) for row in x.reshape(-1, 64)[:, :3]}) == 240


def test_each_pipeline_rank_gets_only_its_stage_and_its_end_of_the_microbatches(cases):
    case = cases["gpipe_4_ranks_3_microbatches"]
    ranks = case["inputs"]
    assert [set(inputs) & {"x", "y"} for inputs in ranks] == [{"x"}, set(), set(), {"y"}]
    assert [inputs["layers"] for inputs in ranks] == case["stages"] == [[0], [1], [2], [3]]
    assert ranks[0]["x"].shape == (3, 4, 8) and ranks[3]["y"].shape == (3, 4, 4)
    for rank, inputs in enumerate(ranks):
        stage = GRADER._stage(case["widths"], case["stages"][rank])
        assert [w.shape for w in inputs["weights"]] == [p.shape for p in stage.parameters()]
        assert inputs["microbatches"] == 3 and all(_own_storage(w) for w in inputs["weights"])


def _honest_outputs(case: dict) -> list[dict]:
    """What honest ranks return for a correctness case (as run.py builds it), from the references."""
    world = case["world_size"]
    if case["kind"] == "ddp_init":
        return [{"params": list(case["expected_params"]), "out": case["expected_out"][r]} for r in range(world)]
    if case["kind"] == "ddp_train":
        return [{"params": [p.clone() for p in case["expected_params"]]} for _ in range(world)]
    if case["kind"] == "ddp_buckets":
        numels = case["bucket_numels"]
        return [{"calls": list(numels), "at_first_layer": len(numels) - 1} for _ in range(world)]
    m = case["microbatches"]
    return [
        {
            "loss": case["expected_loss"] if rank == world - 1 else None,
            "grads": [g.clone() for g in case["expected_grads"][rank]],
            "forwards": m if case["check"] == "schedule" else 0,
            "before_first_backward": m if case["check"] == "schedule" else None,
        }
        for rank in range(world)
    ]


def _with_runtime(case: dict, sent: int | None = 12345) -> dict:
    return {**case, "runtime": {"network_bytes": sent, "meters": {}, "world_size": case["world_size"]}}


def test_check_passes_the_ranks_honest_outputs_and_says_what_crossed_the_network(cases):
    for case in cases.values():
        if "timed" in case:
            continue
        verdict = GRADER.check(_with_runtime(case), _honest_outputs(case))
        assert verdict == {"message": f"the {case['world_size']} ranks sent each other 12345 bytes (headers included)"}
    case = cases["gpipe_2_ranks"]
    assert GRADER.check(_with_runtime(case, None), _honest_outputs(case)) is None  # not counted: nothing to say


def test_check_reads_each_ranks_output_in_rank_order(cases):
    case = _with_runtime(cases["ddp_train_4_ranks_small_buckets"])
    outputs = _honest_outputs(case)
    outputs[2]["params"][1] += 1e-6
    with pytest.raises(CheckFailed, match="rank 2's parameters differ from rank 0's"):
        GRADER.check(case, outputs)
    outputs = _honest_outputs(case)
    for part in outputs:
        part["params"][0] *= 2.0
    with pytest.raises(CheckFailed, match="differ from single-process training"):
        GRADER.check(case, outputs)
    with pytest.raises(CheckFailed, match="expected one result from each of 4 ranks"):
        GRADER.check(case, _honest_outputs(case)[:3])

    case = _with_runtime(cases["ddp_broadcast_init"])
    outputs = _honest_outputs(case)
    outputs[1]["params"] = list(case["inputs"][1]["init"])  # rank 1 kept its own initial weights
    with pytest.raises(CheckFailed, match="rank 1's parameter '0.weight' is not rank 0's initial value"):
        GRADER.check(case, outputs)

    case = _with_runtime(cases["gpipe_3_ranks"])
    outputs = _honest_outputs(case)
    outputs[2]["loss"] *= case["microbatches"]  # summed, not averaged, over the microbatches
    with pytest.raises(CheckFailed, match="the mean over microbatches"):
        GRADER.check(case, outputs)
    outputs = _honest_outputs(case)
    outputs[0]["grads"][0] = None
    with pytest.raises(CheckFailed, match=r"stage 0 \(rank 0\): '0.weight'.grad is None"):
        GRADER.check(case, outputs)

    case = _with_runtime(cases["gpipe_schedule"])
    outputs = _honest_outputs(case)
    outputs[1]["before_first_backward"] = 1
    with pytest.raises(CheckFailed, match="stage 1 ran 1 forward passes before its first backward"):
        GRADER.check(case, outputs)

    case = _with_runtime(cases["ddp_overlap"])
    outputs = _honest_outputs(case)
    outputs[0]["at_first_layer"] = 0
    with pytest.raises(CheckFailed, match="overlaps the rest of backward"):
        GRADER.check(case, outputs)


def _timed_case(cases: dict, steps: list[float], refs: list[float]) -> dict:
    """The benchmark case as check() gets it after the timing phase."""
    case = cases["pipeline_benchmark"]
    shapes = case["timed"]["outputs"]
    gen = torch.Generator().manual_seed(3)
    probes = {name: torch.randn(shape, generator=gen, dtype=torch.float64) for name, shape in shapes.items()}
    inputs = [GRADER.call_inputs(case, seed) for seed in range(len(steps))]
    runtime = {
        "seconds": steps,
        "reference_seconds": refs,
        "inputs": inputs,
        "probes": probes,
        "frozen": True,
        "network_bytes": [300_000 + i for i in range(len(steps))],  # what the worker counted, per call
    }
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
    # One dict per rank, each with its own part only: the inputs on rank 0, the targets on rank 1.
    assert [set(rank) for rank in first] == [{"x"}, {"y"}]
    assert first[0]["x"].shape == (8, 32, 256) and first[1]["y"].shape == (8, 32, 256)
    assert not torch.equal(first[0]["x"], second[0]["x"])  # fresh microbatches for every call
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
    loss = F.mse_loss(model(inputs[0]["x"].reshape(-1, 256)), inputs[1]["y"].reshape(-1, 256))
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
    assert "your ranks sent each other 300002 bytes per step (median)" in verdict["message"]


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


# What run.py and reference.py may import in the sandbox (docs/authoring-labs.md, lab contract v2):
# the standard library, torch, numpy and the runner's lib/ (kernels.bench, labs.sandboxed). Not
# labs.ranks: the worker runs each rank in a sandbox of its own (gpu_runner/rankgroup.py).
SANDBOX_IMPORTS = ("__future__", "torch", "numpy", "kernels.bench", "labs.sandboxed")


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

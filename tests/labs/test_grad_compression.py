"""The grad_compression grader's trusted half: the zero-run reference, the 3LC reference, and the
messages its per-call checks give. Fast, in-process; every shipped solution's verdict is checked
through the real runner by tests/labs/test_lab_check.py."""

from __future__ import annotations

import ast
import sys

import pytest
import torch

from labs.catalog import find_lab
from labs.trusted import CheckFailed

LAB = find_lab("grad_compression")
GRADER = LAB.load_grader()
Z = GRADER.ZERO_BYTE


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ([], []),
        ([Z], [Z]),
        ([Z, Z], [243]),
        ([5, Z, Z, Z, 7], [5, 244, 7]),
        ([Z] * 13, [254]),
        ([Z] * 14, [255]),
        ([Z] * 15, [255, Z]),
        ([Z] * 16, [255, 243]),
        ([Z] * 29, [255, 255, Z]),
        ([0, 242, 120, 122], [0, 242, 120, 122]),
    ],
)
def test_zero_run_reference_is_the_readme_table(raw, encoded):
    raw_t, encoded_t = torch.tensor(raw, dtype=torch.uint8), torch.tensor(encoded, dtype=torch.uint8)
    assert GRADER.zero_run_encode_reference(raw_t).tolist() == encoded
    assert torch.equal(GRADER.zero_run_decode_reference(encoded_t), raw_t)


def test_compress_reference_of_zeros_sends_nothing_but_zero_runs():
    step = GRADER.compress_reference(torch.zeros(1000), 1.0)
    assert step["scale"] == 0.0
    assert step["payload"].tolist() == [255] * 14 + [245]  # 200 bytes of 121: 14 runs of 14, one of 4
    assert not step["sent"].any() and not step["residual"].any()


def test_compress_reference_rounds_half_away_from_zero_with_error_feedback():
    t = torch.tensor([1.0, 0.5, -0.5, 0.25, 0.0])
    first, second = GRADER.compress_chain_reference([t, t], 1.0)
    assert first["q"].tolist() == [1, 1, -1, 0, 0]
    assert torch.equal(first["residual"], torch.tensor([0.0, -0.5, 0.5, 0.25, 0.0]))
    assert torch.equal(second["x"], t + first["residual"])


def _step(t: torch.Tensor, q: list[int], scale: float, residual: torch.Tensor) -> dict:
    qt = torch.tensor(q, dtype=torch.int8)
    payload = GRADER.zero_run_encode_reference(GRADER._threelc().pack_base3_reference(qt))
    return {
        "payload": payload,
        "meta": {"shape": list(t.shape), "scale": scale},
        "decompressed": qt.float() * scale,
        "residual": residual,
    }


def test_check_step_names_the_half_way_value_and_the_rule():
    t = torch.tensor([1.0, 0.5, 0.1])
    wrong = _step(t, [1, 0, 0], 1.0, t - torch.tensor([1.0, 0.0, 0.0]))  # torch.round: half to even
    with pytest.raises(CheckFailed, match=r"element 1, x = 0.5, was quantized to 0, expected 1 .*exactly M / 2"):
        GRADER._check_step("call 1", t, None, wrong, 1.0)


def test_check_step_catches_a_residual_that_was_not_added():
    t, previous = torch.tensor([1.0, 0.2, -0.3]), torch.tensor([0.0, 0.4, 0.0])
    # The submission quantized t alone and kept t - sent: the previous residual was dropped.
    dropped = _step(t, [1, 0, 0], 1.0, t - torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(CheckFailed, match=r"sent \+ residual != input \+ the previous residual at flat index 1"):
        GRADER._check_step("call 2", t, previous, dropped, 1.0)


def test_check_step_accepts_the_reference():
    t = torch.randn(37)
    ref = GRADER.compress_reference(t, 1.25)
    step = {
        "payload": ref["payload"],
        "meta": {"shape": [37], "scale": ref["scale"]},
        "decompressed": ref["sent"],
        "residual": ref["residual"],
    }
    GRADER._check_step("call 1", t, None, step, 1.25)


@pytest.fixture(scope="module")
def cases() -> dict[str, dict]:
    return {case["name"]: case for case in GRADER.cases(3)}


def test_the_held_out_split_stays_with_the_grader(cases):
    case = cases["train_digits_4_ranks"]
    assert case["world_size"] == GRADER.TRAIN_WORLD_SIZE == len(case["inputs"])
    assert all("x_test" not in inputs and "y_test" not in inputs for inputs in case["inputs"])
    assert len(case["y_test"]) == GRADER.DIGITS_TEST_SIZE
    train = torch.cat([inputs["x"] for inputs in case["inputs"]])
    shared = (train[:, None, :] == case["x_test"][None, :, :]).all(dim=2).any(dim=0)
    assert not shared.any()  # no held-out image is among the ranks' shards


def test_every_rank_gets_only_its_own_tensors(cases):
    distributed = [case for case in cases.values() if "world_size" in case]
    assert [case["name"] for case in distributed] == [
        "compressed_allreduce_2_ranks",
        "compressed_allreduce_3_ranks",
        "compressed_allreduce_4_ranks",
        "train_digits_4_ranks",
    ]
    assert sum(case["points"] for case in distributed) == 30  # 20 for the allreduce, 10 for the training
    for case in distributed:
        assert isinstance(case["inputs"], list) and len(case["inputs"]) == case["world_size"], case["name"]
        assert case["timeout"] < LAB.limits.wall_seconds
    for world in GRADER.ALLREDUCE_WORLD_SIZES:
        inputs = cases[f"compressed_allreduce_{world}_ranks"]["inputs"]
        for call in range(3):
            values = [rank["calls"][call]["values"] for rank in inputs]
            assert all(isinstance(v, torch.Tensor) for v in values)  # one tensor per rank, not the list
            assert not torch.equal(values[0], values[1])
    assert torch.equal(inputs[0]["calls"][2]["values"], torch.zeros(3))  # all zeros on rank 0


def _allreduce_outputs(case: dict) -> list[list[dict]]:
    """What a correct submission's ranks return for one compressed_allreduce case."""
    world, inputs = case["world_size"], case["inputs"]
    names = [call["tensor"] for call in inputs[0]["calls"]]
    chains = {
        name: [
            GRADER.compress_chain_reference([c["values"] for c in rank["calls"] if c["tensor"] == name], 1.0)
            for rank in inputs
        ]
        for name in set(names)
    }
    outputs = [[] for _ in range(world)]
    for k, name in enumerate(names):
        position = names[:k].count(name)
        steps = [chains[name][r][position] for r in range(world)]
        total = torch.zeros_like(steps[0]["sent"])
        for step in steps:
            total += step["sent"]
        for r in range(world):
            outputs[r].append(
                {
                    "result": total / world,
                    "returned": None,
                    "residual": steps[r]["residual"],
                    "bytes": (world - 1) * (steps[r]["payload"].numel() + 8),
                }
            )
    return outputs


def _runtime(case: dict, network_bytes: int | None) -> dict:
    return {**case, "runtime": {"network_bytes": network_bytes, "meters": {}, "world_size": case["world_size"]}}


def test_check_allreduce_takes_the_ranks_outputs_and_bounds_the_bytes_on_the_network(cases):
    case = cases["compressed_allreduce_3_ranks"]
    outputs = _allreduce_outputs(case)
    verdict = GRADER.check(_runtime(case, 15_000), outputs)
    assert "the ranks sent each other 15000 bytes over the network" in verdict["message"]
    assert "not metered" in GRADER.check(_runtime(case, None), outputs)["message"]
    # Float tensors on the wire (899 values, 3596 bytes, to each peer), whatever the ranks counted at send.
    floats = 3 * 2 * (2 * (3596 + 370) + 12 + 370)
    with pytest.raises(CheckFailed, match=r"sent each other \d+ bytes over the network .* Send the compressed bytes"):
        GRADER.check(_runtime(case, floats), outputs)
    outputs[2][1]["result"] = outputs[2][1]["result"] + 1e-3
    with pytest.raises(CheckFailed, match=r"world size 3, call 2 of 3 .*, rank 2: t vs the average"):
        GRADER.check(_runtime(case, 15_000), outputs)


def test_check_allreduce_names_a_rank_that_sent_floats(cases):
    case = cases["compressed_allreduce_2_ranks"]
    outputs = _allreduce_outputs(case)
    outputs[1][0]["bytes"] = 3596
    with pytest.raises(CheckFailed, match=r"call 1 of 3 .*, rank 1: this rank sent 3596 bytes .* Send the compressed"):
        GRADER.check(_runtime(case, 5_000), outputs)


def test_the_metric_is_what_the_ranks_sent_each_other_on_the_network(cases):
    case = {**cases["train_digits_4_ranks"], "baseline_accuracy": 0.0}  # the untrained weights pass
    init = case["inputs"][0]["init"]
    outputs = [{"sparsity_multiplier": 1.25, "params": list(init), "bytes": 90_000} for _ in range(4)]
    verdict = GRADER.check(_runtime(case, 2_000_000), outputs)
    assert verdict["metric"] == 2.0
    assert "4 ranks sent each other 2.000 MB over the network in 200 steps" in verdict["message"]
    assert "0.360 MB of it passed to send" in verdict["message"]
    assert GRADER.check(_runtime(case, None), outputs)["metric"] is None  # an unmetered worker ranks nothing
    outputs[3] = {**outputs[3], "params": [p + 1e-6 for p in init]}
    with pytest.raises(CheckFailed, match="rank 3's layer 1 weight differs from rank 0's"):
        GRADER.check(_runtime(case, 2_000_000), outputs)


# What run.py may import in the sandbox (docs/authoring-labs.md, lab contract v2): the standard
# library, torch, numpy and the runner's lib/ (kernels.bench, labs.sandboxed).
SANDBOX_IMPORTS = ("__future__", "torch", "numpy", "kernels.bench", "labs.sandboxed")


def test_run_py_is_a_module_that_imports_only_what_the_sandbox_ships():
    tree = ast.parse(LAB.run_module.read_text(encoding="utf-8"))
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
    assert "run" in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not calls & {"exec", "eval", "globals"}

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


def test_the_held_out_split_stays_with_the_grader():
    case = next(c for c in GRADER.cases(3) if c["name"] == "train_digits_4_ranks")
    inputs = case["inputs"]
    assert "x_test" not in inputs and "y_test" not in inputs and len(case["y_test"]) == GRADER.DIGITS_TEST_SIZE
    train = torch.cat(inputs["x_shards"])
    shared = (train[:, None, :] == case["x_test"][None, :, :]).all(dim=2).any(dim=0)
    assert not shared.any()  # no held-out image is among the ranks' shards


# What run.py may import in the sandbox (docs/authoring-labs.md, lab contract v2): the standard
# library, torch, numpy and the runner's lib/ (kernels.bench, labs.sandboxed, labs.ranks).
SANDBOX_IMPORTS = ("__future__", "torch", "numpy", "kernels.bench", "labs.sandboxed", "labs.ranks")


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

"""The nas_search lab's trusted checks and its run.py, without the sandbox: what each rule rejects
and says.

``lab check`` proves the grader end to end with the shipped solutions; these cover the rules the
solutions do not reach (malformed spaces, learning rates, models that know the answers), the
worker's trial count, and what run.py is allowed to be.
"""

from __future__ import annotations

import importlib.util
import types

import pytest
import torch
from torch import nn

from labs.catalog import find_lab
from labs.trusted import CheckFailed

LAB = find_lab("nas_search")
GRADER = LAB.load_grader()


def _load_run_module() -> types.ModuleType:
    """The lab's run.py, imported by path as the sandbox's harness does."""
    spec = importlib.util.spec_from_file_location("nas_search_run", LAB.run_module)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUN = _load_run_module()


def _shapes(*params: list[int]) -> dict:
    return {"parameters": [list(p) for p in params], "buffers": []}


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ({}, "empty dict"),
        ({"hidden": []}, "non-empty list"),
        ({"hidden": [16]}, "single configuration"),
        ({"hidden": [16, 16]}, "same choice twice"),
        ({"hidden": [16, 32], "lr": [0.01, 3]}, "learning rate must be a number in (0, 1]"),
        ({"hidden": [16, "<Tensor: tensor(3)>"]}, "plain numbers"),
    ],
)
def test_malformed_search_spaces_are_named(choices, message):
    with pytest.raises(CheckFailed, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        GRADER.check({"inputs": {"kind": "space"}}, {"keys": list(choices), "choices": choices})


def test_parameters_are_recounted_with_buffers():
    assert GRADER._numel({"parameters": [[10, 64], [10]], "buffers": [[10], []]}) == 650 + 10 + 1


def test_build_rejects_oversized_models_and_a_builder_that_ignores_cfg():
    small = {"cfg": {"hidden": 16}, "output_shape": [5, 10], "output_finite": True, "shapes": _shapes([16, 64])}
    other = {**small, "cfg": {"hidden": 32}, "shapes": _shapes([32, 64])}
    huge = {**small, "cfg": {"hidden": 512}, "shapes": _shapes([512, 64])}
    GRADER.check({"inputs": {"kind": "build"}}, {"built": [small, other]})
    with pytest.raises(CheckFailed, match="32768 parameters"):
        GRADER.check({"inputs": {"kind": "build"}}, {"built": [small, huge]})
    with pytest.raises(CheckFailed, match="same parameter shapes"):
        GRADER.check({"inputs": {"kind": "build"}}, {"built": [small, {**small, "cfg": {"hidden": 32}}]})


def test_best_config_values_must_be_choices_of_the_same_type():
    output = {"choices": {"depth": [1, 2]}, "best": {"depth": True}, "best_shapes": _shapes([10, 64])}
    with pytest.raises(CheckFailed, match="True is not one of the choices"):
        GRADER.check({"inputs": {"kind": "search", "part": "best"}}, output)


def _answering(logits: torch.Tensor) -> dict:
    """A graph (labs.sandboxed.export_graph's form) whose output is ``logits``, whatever the input."""
    return {
        "format": "aten-graph/1",
        "inputs": [{"name": "x", "shape": [len(logits), 64], "dtype": "float32"}],
        "tensors": {"answer": logits},
        "nodes": [{"name": "out", "op": "aten.clone.default", "args": [{"ref": "answer"}], "kwargs": {}}],
        "outputs": [{"ref": "out"}],
    }


def _retrain_case(labels: torch.Tensor, trials: int = 0) -> dict:
    case = {"inputs": {"kind": "search", "part": "retrain"}, "x_test": torch.rand(len(labels), 64), "y_test": labels}
    return {**case, "runtime": {"meters": {"trial": trials}}} if trials else case


def test_the_metric_is_the_mean_test_accuracy_of_the_graphs_run_here_and_a_model_that_knows_the_answers_fails():
    labels = torch.arange(10).repeat(45)
    right = _answering(torch.nn.functional.one_hot(labels, 10).float())
    wrong = _answering(torch.nn.functional.one_hot((labels + 1) % 10, 10).float())
    case = _retrain_case(labels)
    output = {"best": {"hidden": 16}, "graphs": [right, right, wrong], "untrained_graph": wrong}
    with pytest.raises(CheckFailed, match="below the minimum"):
        GRADER.check(case, output)
    output["graphs"] = [right, right, right]
    assert GRADER.check(case, output)["metric"] == pytest.approx(1.0)
    with pytest.raises(CheckFailed, match="before any training"):
        GRADER.check(case, {**output, "untrained_graph": right})
    with pytest.raises(CheckFailed, match="after search\\(\\) returned"):
        GRADER.check(_retrain_case(labels, trials=2), output)


def test_a_retrained_model_that_is_not_a_graph_of_standard_layers_fails_with_the_reason():
    labels = torch.arange(10).repeat(45)
    graph = _answering(torch.nn.functional.one_hot(labels, 10).float())
    graph["nodes"][0]["op"] = "aten.sin.default"
    output = {"best": {"hidden": 16}, "graphs": [graph] * 3, "untrained_graph": graph}
    with pytest.raises(CheckFailed, match=r"before training: the exported model uses aten\.sin\.default"):
        GRADER.check(_retrain_case(labels), output)
    big = _answering(torch.zeros(450, 30))
    with pytest.raises(CheckFailed, match="more than 10000"):
        GRADER.check(_retrain_case(labels), {**output, "untrained_graph": big})


def test_the_budget_is_the_workers_count_not_what_the_sandbox_reports():
    case = {"inputs": {"kind": "search", "part": "budget", "n_trials": 6}}
    honest = {"calls": [{"hidden": 16}] * 6, "n_trials": 6}
    GRADER.check({**case, "runtime": {"meters": {"trial": 6}}}, honest)
    forged = {"calls": [], "n_trials": 100}  # an emptied list and a raised budget change nothing
    with pytest.raises(CheckFailed, match=r"evaluate\(\) 9 times with n_trials=6 \(counted by the grader"):
        GRADER.check({**case, "runtime": {"meters": {"trial": 9}}}, forged)
    with pytest.raises(CheckFailed, match="never called evaluate"):
        GRADER.check(case, honest)  # no runtime: the worker counted nothing


class _Meter:
    """The harness's meter, as the worker keeps it: a count the student's code cannot lower."""

    def __init__(self) -> None:
        self.count = 0

    def meter(self, name: str, amount: int = 1) -> int:
        assert name == "trial"
        self.count += amount
        return self.count


def test_evaluate_enforces_the_budget_by_the_workers_count_even_when_its_own_list_is_emptied():
    student = types.ModuleType("search")
    student.build_model = lambda cfg: nn.Linear(64, 10)
    inputs = GRADER.cases(3)[2]["inputs"]
    harness = _Meter()
    evaluate = RUN.Evaluate(student, {**inputs, "steps": 2}, harness, {"lr": [0.01, 0.03]})
    for _ in range(inputs["n_trials"]):
        evaluate.calls.clear()
        assert 0.0 <= evaluate({"lr": 0.01}) <= 1.0
    evaluate.calls.clear()
    with pytest.raises(RuntimeError, match=f"called {inputs['n_trials'] + 1} times but the budget is"):
        evaluate({"lr": 0.01})
    with pytest.raises(RuntimeError, match="budget"):
        evaluate({"lr": 0.5})  # still counted, still over the budget
    assert harness.count == inputs["n_trials"] + 2


def test_the_sandbox_never_receives_the_test_images():
    for case in GRADER.cases(5):
        assert "x_test" not in case["inputs"] and "y_test" not in case["inputs"]
        assert all(not isinstance(v, torch.Tensor) or len(v) != 450 for v in case["inputs"].values())

"""The nas_search lab's trusted checks, without the sandbox: what each rule rejects and says.

``lab check`` proves the grader end to end with the shipped solutions; these cover the rules the
solutions do not reach (malformed spaces, learning rates, models that know the answers).
"""

from __future__ import annotations

import pytest
import torch

from labs.catalog import find_lab
from labs.grading import CheckFailed

GRADER = find_lab("nas_search").load_grader()


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


def test_the_metric_is_the_mean_test_accuracy_and_a_model_that_knows_the_answers_fails():
    labels = torch.arange(10).repeat(45)
    right = torch.nn.functional.one_hot(labels, 10).float()
    wrong = torch.nn.functional.one_hot((labels + 1) % 10, 10).float()
    case = {"inputs": {"kind": "search", "part": "retrain"}, "y_test": labels}
    output = {"best": {"hidden": 16}, "logits": [right, right, wrong], "untrained_logits": wrong}
    with pytest.raises(CheckFailed, match="below the minimum"):
        GRADER.check(case, output)
    output["logits"] = [right, right, right]
    assert GRADER.check(case, output)["metric"] == pytest.approx(1.0)
    with pytest.raises(CheckFailed, match="before any training"):
        GRADER.check(case, {**output, "untrained_logits": right})

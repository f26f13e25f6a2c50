"""The quantization lab's trusted references and messages, without the sandbox.

The shipped solutions prove the grader end to end (``lab check``); these pin down the semantics
the README promises (ties to even, the full two's-complement range), the bit count the
leaderboard ranks by, that each kind of quantizer bug is named as such, and that the test images
stay in the worker.
"""

from __future__ import annotations

import pytest
import torch

from labs.catalog import find_lab
from labs.trusted import CheckFailed

LAB = find_lab("quantization")
GRADER = LAB.load_grader()


def test_reference_rounds_ties_to_even_and_clamps_to_the_full_signed_range():
    x = torch.tensor([0.375, 0.625, -0.625, 3.0, -3.0, -2.0, 1.75])  # width 4, frac 2: steps of 0.25
    expected = torch.tensor([0.5, 0.5, -0.5, 1.75, -2.0, -2.0, 1.75])
    assert torch.equal(GRADER.quantize_reference(x, 4, 2), expected)
    assert GRADER.quantize_reference(x.double(), 4, 2).dtype == torch.float64
    assert torch.equal(GRADER.quantize_reference(torch.tensor([-5.0, 0.4, 3.0]), 1, 0), torch.tensor([-1.0, 0.0, 0.0]))


def _quantize_message(wrong_quantizer) -> str:
    calls = [{"x": GRADER._round_values(torch.Generator().manual_seed(0), 4, 2, 200), "width": 4, "frac_width": 2}]
    calls.append({"x": GRADER._clamp_values(torch.Generator().manual_seed(1), 4, 2, 200, torch.float32), "width": 4})
    calls[1]["frac_width"] = 2
    outputs = [wrong_quantizer(c["x"], 4, 2) for c in calls]
    with pytest.raises(CheckFailed) as failure:
        GRADER.check({"inputs": {"kind": "quantize", "calls": calls}}, {"outputs": outputs})
    return str(failure.value)


def test_each_kind_of_quantizer_bug_gets_its_own_explanation():
    assert "flooring" in _quantize_message(lambda x, w, f: torch.clamp(torch.floor(x * 4), -8, 7) / 4)
    assert "round half to even" in _quantize_message(lambda x, w, f: torch.clamp(torch.floor(x * 4 + 0.5), -8, 7) / 4)
    assert "not to a symmetric" in _quantize_message(lambda x, w, f: torch.clamp(torch.round(x * 4), -7, 7) / 4)
    assert "clamp the integer" in _quantize_message(lambda x, w, f: torch.round(x * 4) / 4)
    assert "not on the grid" in _quantize_message(lambda x, w, f: x)


def test_effective_bits_count_nonzero_quantized_weights_over_the_original_weight_count():
    quantized = {"kind": "linear", "quantized": True, "widths": {"weight_width": 4}}
    layers = [
        {**quantized, "effective_weight": torch.tensor([[0.5, 0.0], [0.0, -0.25]])},  # 2 nonzero x 4 bits
        {"kind": "relu"},
        {"kind": "linear", "quantized": False, "effective_weight": torch.tensor([[1.0, 0.0]])},  # 1 x 32 bits
    ]
    bits, notes = GRADER.effective_bits(layers, original_weights=10)
    assert bits == pytest.approx((2 * 4 + 32) / 10)
    assert notes == ["layer 0: 4-bit, 50.0% nonzero", "layer 2: 32-bit, 50.0% nonzero"]


def _compress_case(x_check: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor) -> dict:
    return {
        "inputs": {"kind": "compress", "x_check": x_check},
        "x_test": x_test,
        "y_test": y_test,
        "float_accuracy": 0.5,
        "original_weights": 640,
    }


def test_a_compressed_model_whose_logits_do_not_match_its_widths_is_rejected():
    weight = torch.tensor([[0.3] * 64] * 10)
    widths = dict(GRADER.DEFAULT_WIDTHS, weight_width=2, weight_frac_width=2)
    layer = {"kind": "linear", "quantized": True, "weight": weight, "bias": None, "widths": widths}
    x = torch.rand(6, 64)
    case = _compress_case(x, torch.rand(4, 64), torch.zeros(4, dtype=torch.int64))
    honest = torch.nn.functional.linear(GRADER.quantize_reference(x, 8, 4), GRADER.quantize_reference(weight, 2, 2))
    assert GRADER.check(case, {"logits": honest, "layers": [layer]})["metric"] == pytest.approx(2.0)
    with pytest.raises(
        CheckFailed, match="differ from the forward pass the grader rebuilt from its layers on 6 of 6 check"
    ):
        GRADER.check(case, {"logits": torch.nn.functional.linear(x, weight), "layers": [layer]})


def test_the_accuracy_is_the_rebuilt_models_on_the_test_images_kept_in_the_worker():
    # a layer that answers class 0 for bright images and class 1 for dark ones
    weight = torch.zeros(10, 64)
    weight[0], weight[1] = 1.0, -1.0
    layer = {"kind": "linear", "quantized": False, "weight": weight, "bias": torch.zeros(10)}
    layer["bias"][1] = 32.0  # dark (sum < 16): class 1 wins
    x_check = torch.rand(8, 64)
    logits = torch.nn.functional.linear(x_check, weight, layer["bias"])
    bright, dark = torch.ones(3, 64), torch.zeros(3, 64)
    right = _compress_case(x_check, torch.cat([bright, dark]), torch.tensor([0, 0, 0, 1, 1, 1]))
    assert "held-out accuracy 1.000" in GRADER.check(right, {"logits": logits, "layers": [layer]})["message"]
    wrong = _compress_case(x_check, torch.cat([bright, dark]), torch.tensor([1, 1, 1, 0, 0, 0]))
    with pytest.raises(CheckFailed, match="held-out accuracy 0.000: below the threshold"):
        GRADER.check(wrong, {"logits": logits, "layers": [layer]})


def test_the_sandbox_never_receives_the_test_images():
    case = GRADER.cases(3)[-1]
    assert case["name"] == "compress_digits"
    assert "x_test" not in case["inputs"] and "y_test" not in case["inputs"]
    test_rows = {tuple(row.tolist()) for row in case["x_test"]}
    for value in case["inputs"].values():
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == 64:
            assert not test_rows & {tuple(row.tolist()) for row in value}
    train_rows = {tuple(row.tolist()) for row in case["inputs"]["x_train"]}
    check_rows = [tuple(row.tolist()) for row in case["inputs"]["x_check"]]
    assert sum(row in train_rows for row in check_rows) == GRADER.CHECK_TRAIN_IMAGES

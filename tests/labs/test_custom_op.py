"""The custom_op lab's timed case, without the sandbox.

The shipped solutions prove the grader end to end (``lab check``: ``precomputes_timed_gradients``
fails the fingerprints, ``slows_reference`` gets full marks because torch's reference runs in a
clean process); these pin down the pieces: ``reference.py`` run through ``run.timed`` gives torch's
gradients, the check accepts the correct solution's fingerprints and turns the worker's times into
the median per-pair ratio, an answer carried over from an earlier call is rejected, and so are
gradients computed in half precision, while other summation orders pass.
"""

from __future__ import annotations

import importlib.util
import statistics

import pytest
import torch

from labs.catalog import find_lab
from labs.trusted import CheckFailed

LAB = find_lab("custom_op")
GRADER = LAB.load_grader()


def _module(path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUN = _module(LAB.run_module, "custom_op_lab_run")
REFERENCE = _module(LAB.reference_module, "custom_op_reference")
CORRECT = _module(LAB.path / "solutions" / "correct" / "linear_op.py", "custom_op_correct")


def _timed_case(calls: int) -> dict:
    """The benchmark case as the worker hands it to check(): ``calls`` calls' inputs and probes."""
    case = GRADER.cases(3)[-1]
    gen = torch.Generator().manual_seed(0)
    dtype = getattr(torch, case["timed"]["dtype"])
    probes = {name: torch.randn(shape, generator=gen, dtype=dtype) for name, shape in case["timed"]["outputs"].items()}
    case["runtime"] = {
        "seconds": [0.010, 0.012, 0.011][:calls],
        "reference_seconds": [0.011, 0.010, 0.012][:calls],
        "inputs": [GRADER.call_inputs(case, seed) for seed in range(calls)],
        "probes": probes,
        "frozen": True,
    }
    return case


def _fingerprint(outputs: dict, probes: dict) -> dict:
    """What the harness replies for one call (gpu_runner/harness.py, ``_fingerprint``)."""
    return {
        name: float(torch.dot(outputs[name].detach().reshape(-1).to(probe.dtype), probe.reshape(-1)))
        for name, probe in probes.items()
    }


def test_the_reference_and_the_correct_solution_give_torchs_gradients_in_a_timed_call():
    case = _timed_case(1)
    inputs = {**case["inputs"], **case["runtime"]["inputs"][0]}
    expected = GRADER._reference(inputs["x"], inputs["weight"], inputs["bias"], inputs["grad_output"])
    for module in (REFERENCE, CORRECT):
        outputs = RUN.timed(module, inputs, None)
        assert set(outputs) == set(case["timed"]["outputs"])
        for name, value in outputs.items():
            torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-4)
    layer = REFERENCE.MyLinear(5, 3)
    assert sorted(name for name, _ in layer.named_parameters()) == ["bias", "weight"]


def test_the_check_accepts_correct_calls_and_ranks_by_the_median_per_pair_ratio():
    case = _timed_case(3)
    runtime = case["runtime"]
    calls = [
        _fingerprint(RUN.timed(CORRECT, {**case["inputs"], **inputs}, None), runtime["probes"])
        for inputs in runtime["inputs"]
    ]
    verdict = GRADER.check(case, {"calls": calls})
    ratios = [m / t for m, t in zip(runtime["seconds"], runtime["reference_seconds"], strict=True)]
    assert verdict["metric"] == pytest.approx(statistics.median(ratios))
    assert verdict["message"].startswith("forward + backward, 256x512 input, 512x512 weight: ")


def test_an_answer_carried_over_from_an_earlier_call_is_rejected():
    case = _timed_case(3)
    runtime = case["runtime"]
    first = RUN.timed(CORRECT, {**case["inputs"], **runtime["inputs"][0]}, None)
    with pytest.raises(CheckFailed, match=r"timed call 2 of 3 returned a wrong 'grad_x'"):
        GRADER.check(case, {"calls": [_fingerprint(first, runtime["probes"])] * 3})


def test_every_timed_call_gets_fresh_inputs_from_its_seed():
    case = GRADER.cases(3)[-1]
    a, b, again = (GRADER.call_inputs(case, seed) for seed in (1, 2, 1))
    assert all(torch.equal(a[k], again[k]) and not torch.equal(a[k], b[k]) for k in a)
    assert a["weight"].std().item() == pytest.approx(512**-0.5, rel=0.05)
    assert {k: list(v.shape) for k, v in a.items()} == {
        "x": [256, 512],
        "weight": [512, 512],
        "bias": [512],
        "grad_output": [256, 512],
    }


def _row_by_row(inputs: dict) -> dict:
    """An honest backward in another summation order: one outer product per row, summed in float32."""
    x, w, g = inputs["x"], inputs["weight"], inputs["grad_output"]
    return {
        "grad_x": (w.t() @ g.t()).t(),
        "grad_weight": sum(torch.outer(g[k], x[k]) for k in range(len(g))),
        "grad_bias": sum(g[k] for k in range(len(g))),
    }


def _in_half(dtype: torch.dtype):
    def grads(inputs: dict) -> dict:
        x, w, g = inputs["x"], inputs["weight"], inputs["grad_output"]
        return {
            "grad_x": (g.to(dtype) @ w.to(dtype)).float(),
            "grad_weight": (g.t().to(dtype) @ x.to(dtype)).float(),
            "grad_bias": g.sum(0),
        }

    return grads


@pytest.mark.parametrize(
    ("backward", "accepted"), [(_row_by_row, True), (_in_half(torch.float16), False), (_in_half(torch.bfloat16), False)]
)
def test_the_fingerprints_accept_any_summation_order_and_refuse_half_precision(backward, accepted):
    case = _timed_case(3)
    runtime = case["runtime"]
    calls = [_fingerprint(backward(inputs), runtime["probes"]) for inputs in runtime["inputs"]]
    if accepted:
        GRADER.check(case, {"calls": calls})
    else:
        with pytest.raises(CheckFailed, match=r"timed call [123] of 3 returned a wrong 'grad_(x|weight)'"):
            GRADER.check(case, {"calls": calls})

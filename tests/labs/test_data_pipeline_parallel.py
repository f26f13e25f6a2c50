"""The trusted half of the data_pipeline_parallel grader: its references and its benchmark guards.

The shipped solutions (graded by tests/labs/test_lab_check.py) prove the checks catch each
mistake; these tests pin what the solutions cannot: that the references are single-process
PyTorch, that the bucket rule is the README's, and how the benchmark treats forged times.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labs.catalog import find_lab
from labs.grading import CheckFailed

GRADER = find_lab("data_pipeline_parallel").load_grader()


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


def _honest_benchmark_output(case: dict, steps: list[float], refs: list[float]) -> list[dict]:
    world = case["inputs"]["world_size"]
    parts = [{"grads": case["expected_grads"][rank], "losses": None} for rank in range(world)]
    parts[0].update(steps=steps, references=refs)
    parts[-1]["losses"] = list(case["expected_losses"])
    return parts


def test_the_benchmark_ranks_the_median_ratio_to_the_ideal(cases):
    case = {**cases["pipeline_benchmark"], "runtime": {"envelopes": {"pipeline": 2.0}}}
    steps, refs = [0.09, 0.10, 0.20, 0.09, 0.11], [0.08] * 5  # ideal = 9/8 x 0.08 = 0.09
    verdict = GRADER.check(case, _honest_benchmark_output(case, steps, refs))
    assert verdict["metric"] == pytest.approx(0.10 / 0.09)
    assert "step / ideal = 1.111" in verdict["message"]


def test_the_benchmark_rejects_times_longer_than_the_workers_clock(cases):
    case = {**cases["pipeline_benchmark"], "runtime": {"envelopes": {"pipeline": 0.5}}}
    with pytest.raises(CheckFailed, match="not real"):
        GRADER.check(case, _honest_benchmark_output(case, [0.1] * 5, [0.08] * 5))


def test_the_benchmark_does_not_rank_a_step_faster_than_its_compute(cases):
    case = {**cases["pipeline_benchmark"], "runtime": {"envelopes": {"pipeline": 2.0}}}
    verdict = GRADER.check(case, _honest_benchmark_output(case, [0.01] * 5, [0.08] * 5))
    assert "metric" not in verdict and "not ranked" in verdict["message"]


def test_the_benchmark_checks_every_timed_loss(cases):
    case = {**cases["pipeline_benchmark"], "runtime": {"envelopes": {"pipeline": 2.0}}}
    output = _honest_benchmark_output(case, [0.1] * 5, [0.08] * 5)
    output[-1]["losses"][3] *= 1.001
    with pytest.raises(CheckFailed, match="timed step 4"):
        GRADER.check(case, output)

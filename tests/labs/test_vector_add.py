"""The vector_add lab through the real runner, beyond what ``lab check`` asserts of its solutions.

On a machine without a GPU the kernels run in Triton's interpreter inside the sandbox, and the
benchmark guards (timed outputs, physical floor, the worker's clock) still run; the shipped
cheats prove each guard that can run on a CPU rejects what it should.
"""

from __future__ import annotations

import torch

from gpu_runner.grading import grade
from labs.catalog import find_lab
from labs.protocol import JobMessage
from tests.gpu_runner.conftest import ListSink

LAB = find_lab("vector_add")
SOLUTIONS = {s.name: s for s in LAB.solutions()}


def grade_solution(files: dict[str, str], seed: int = 4321) -> dict:
    message = JobMessage(job_id="va", lab_slug="vector_add", lab_version=LAB.version, files=files, limits={}, seed=seed)
    return grade(message, ListSink())


def test_the_lab_ships_the_contract_and_every_kind_of_wrong_solution():
    assert LAB.entry == "vector_add.py" and LAB.resource_class == "gpu" and LAB.metric.direction == "higher"
    assert {"starter", "correct", "calls_torch_add", "no_tail_mask", "crashes"} <= set(SOLUTIONS)
    assert {"caches_output", "fakes_timer", "forges_report"} <= set(SOLUTIONS)


def test_the_correct_solution_shows_its_figures_ranked_only_on_a_gpu():
    """Every solution's verdict and message is checked by tests/labs/test_lab_check.py; this is
    what the correct one's benchmark shows, which differs with the worker."""
    result = grade_solution(SOLUTIONS["correct"].files)
    assert result["verdict"] == "succeeded" and result["score"] == 100.0
    benchmark = next(t for t in result["tests"] if t["name"] == "benchmark")
    assert "GB/s" in benchmark["message"] and "% of peak" in benchmark["message"]
    if torch.cuda.is_available():
        assert result["metric"] > 0 and result["ranked"] and "interpreter" not in benchmark["message"]
    else:  # the figures are shown, marked as the interpreter's, and not ranked
        assert "interpreter" in benchmark["message"] and result["metric"] is None and not result["ranked"]
        assert "correct; unranked: no GPU worker" in result["summary"]


def test_the_benchmark_is_not_timed_until_correctness_passes():
    result = grade_solution(SOLUTIONS["no_tail_mask"].files)
    benchmark = next(t for t in result["tests"] if t["name"] == "benchmark")
    assert benchmark["outcome"] == "failed"
    assert "every correctness test must pass before the benchmark runs" in benchmark["message"]

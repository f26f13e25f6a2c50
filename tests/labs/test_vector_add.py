"""The vector_add lab through the real runner: every shipped solution gets its verdict and message.

On a machine without a GPU the kernels run in Triton's interpreter inside the sandbox, and the
benchmark guards (timed outputs, physical floor, the worker's clock) still run; the shipped
cheats prove each guard that can run on a CPU rejects what it should.
"""

from __future__ import annotations

import pytest
import torch

from gpu_runner.grading import grade
from labs.catalog import find_lab
from tests.gpu_runner.conftest import ListSink

LAB = find_lab("vector_add")
SOLUTIONS = {s.name: s for s in LAB.solutions()}


def grade_solution(files: dict[str, str], seed: int = 4321) -> dict:
    message = {
        "job_id": "va",
        "lab": {"slug": "vector_add", "version": LAB.version},
        "files": files,
        "limits": {},
        "seed": seed,
    }
    return grade(message, ListSink())


def test_the_lab_ships_the_contract_and_every_kind_of_wrong_solution():
    assert LAB.entry == "vector_add.py" and LAB.resource_class == "gpu" and LAB.metric.direction == "higher"
    assert {"starter", "correct", "calls_torch_add", "no_tail_mask", "crashes"} <= set(SOLUTIONS)
    assert {"caches_output", "fakes_timer", "forges_report"} <= set(SOLUTIONS)


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_each_solution_gets_the_verdict_and_message_it_is_meant_to(name):
    solution = SOLUTIONS[name]
    result = grade_solution(solution.files)
    failures = "\n".join(f"{t['name']}: {t['message']}" for t in result["tests"] if t["outcome"] != "passed")
    assert result["verdict"] == solution.expected_verdict, (result["summary"], failures)
    for expected in solution.expected_messages:
        assert expected in failures, f"{expected!r} not in:\n{failures}"
    if name == "correct":
        assert result["score"] == 100.0
        benchmark = next(t for t in result["tests"] if t["name"] == "benchmark")
        assert "GB/s" in benchmark["message"] and "% of peak" in benchmark["message"]
        if torch.cuda.is_available():
            assert result["metric"] > 0 and "interpreter" not in benchmark["message"]
        else:  # the figures are shown, marked as the interpreter's, and not ranked
            assert "interpreter" in benchmark["message"] and result["metric"] is None


def test_cheats_pass_correctness_and_lose_only_the_benchmark():
    """Caching, a fake clock and a forged report all survive the correctness tests: only the
    benchmark guards stand between them and the leaderboard."""
    for name in ("caches_output", "fakes_timer", "forges_report"):
        result = grade_solution(SOLUTIONS[name].files, seed=77)
        failed = [t["name"] for t in result["tests"] if t["outcome"] == "failed"]
        assert failed == ["benchmark"], (name, failed)
        assert result["score"] == 90.0


def test_the_benchmark_is_not_timed_until_correctness_passes():
    result = grade_solution(SOLUTIONS["no_tail_mask"].files)
    benchmark = next(t for t in result["tests"] if t["name"] == "benchmark")
    assert benchmark["outcome"] == "failed"
    assert "every correctness test must pass before the benchmark runs" in benchmark["message"]

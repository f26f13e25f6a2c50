"""``lab check`` over every lab of the catalog: the starter fails cleanly, the correct solution
gets full marks and every wrong solution gets the verdict, reason, score and messages its
``expected.toml`` names, all through the real runner and sandbox (CI runs this for every lab)."""

from __future__ import annotations

import pytest

from gpu_runner.selfcheck import self_check_lab
from labs.catalog import discover_labs

LABS = {lab.slug: lab for lab in discover_labs()}


# A distributed lab grades its 13 to 15 solutions in 4 to 6 minutes on 2 idle cores (a sandbox per
# rank, each importing torch); the suite's 300 s default is for one test, not a lab's whole catalog.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("slug", sorted(LABS))
def test_every_shipped_solution_gets_the_outcome_it_is_meant_to(slug):
    lab = LABS[slug]
    problems, checks = self_check_lab(lab)
    assert not problems, problems
    kinds = [c.solution.kind for c in checks]
    assert kinds.count("starter") == 1 and kinds.count("correct") == 1 and kinds.count("wrong") >= 4
    failures = {c.solution.name: c.problems for c in checks if not c.ok}
    assert not failures, failures
    correct = next(c for c in checks if c.solution.kind == "correct")
    assert correct.result["verdict"] == "succeeded" and correct.result["score"] == 100.0

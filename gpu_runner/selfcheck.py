"""Grade a lab's starter and every shipped solution through the real runner, and compare each
outcome with what the lab says it must be (``solutions/*/expected.toml``).

This is how a lab proves its grader: the correct solution gets full marks, the starter fails
cleanly (its tests fail; it does not crash on import), and every wrong solution gets the verdict,
reason, score and messages meant for it. ``manage.py lab check`` and CI run it for every lab; the
portal runs it on a worker before an uploaded lab can be published.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field

from gpu_runner.events import EventSink
from gpu_runner.grading import grade
from labs.catalog import LabFolder, Solution
from labs.protocol import JobMessage

MIN_WRONG_SOLUTIONS = 4
STARTER_REASONS = ("wrong_answer",)  # the starter's tests fail; it imports, runs and exits cleanly


class _Quiet(EventSink):
    def _deliver(self, event: dict) -> None:
        pass


@dataclass
class SolutionReport:
    solution: Solution
    result: dict
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "solution": self.solution.name,
            "kind": self.solution.kind,
            "ok": self.ok,
            "problems": self.problems,
            "expected_verdict": self.solution.expected_verdict,
            "verdict": self.result.get("verdict"),
            "reason": self.result.get("reason"),
            "score": self.result.get("score"),
            "metric": self.result.get("metric"),
            "summary": self.result.get("summary"),
            "seconds": round(self.seconds, 2),
            "build_cache": self.result.get("timings", {}).get("build_cache"),
        }


def lab_problems(lab: LabFolder) -> list[str]:
    """What the lab folder lacks before any solution is graded."""
    solutions = lab.solutions()
    problems = []
    if not any(s.kind == "correct" for s in solutions):
        problems.append("solutions/correct/ is missing: ship a solution that gets full marks")
    wrong = sum(s.kind == "wrong" for s in solutions)
    if wrong < MIN_WRONG_SOLUTIONS:
        problems.append(f"solutions/wrong/ has {wrong} solutions; ship at least {MIN_WRONG_SOLUTIONS}")
    for solution in solutions:
        if not solution.files:
            problems.append(f"{solution.name}: no .py files")
        elif lab.entry not in solution.files:
            problems.append(f"{solution.name}: no {lab.entry}")
    return problems


def self_check_solution(lab: LabFolder, solution: Solution, *, seed: int, owner: str) -> SolutionReport:
    message = JobMessage(
        job_id=f"check-{lab.slug}-{solution.name}"[:64],
        lab_slug=lab.slug,
        lab_version=lab.version,
        files=solution.files,
        limits={**lab.limits.as_dict(), **solution.limits},
        seed=seed,
        owner=owner,
    )
    started = time.perf_counter()
    result = grade(message, _Quiet(), lab=lab)
    check = SolutionReport(solution, result, time.perf_counter() - started)
    check.problems = _compare(solution, result)
    return check


def self_check_lab(lab: LabFolder, *, seed: int = 20261121, owner: str = "lab-check", only=None, on_checked=None):
    """Grade every solution (or those named in ``only``); returns (lab problems, solution checks)."""
    checks = []
    for solution in lab.solutions():
        if only and solution.name not in only:
            continue
        check = self_check_solution(lab, solution, seed=seed, owner=f"{owner}:{lab.slug}")
        checks.append(check)
        if on_checked:
            on_checked(check)
    return lab_problems(lab) + visibility_problems(lab, checks), checks


def visibility_problems(lab: LabFolder, checks: list[SolutionReport]) -> list[str]:
    """``[visibility]`` patterns that match none of the tests the solutions were graded on (a typo
    would leave the test visible that the author meant to hide)."""
    names = {t.get("name") for check in checks for t in check.result.get("tests", [])}
    if not names:
        return []
    return [
        f"[visibility] {pattern!r} matches none of the lab's tests ({', '.join(sorted(names))[:300]})"
        for pattern, _ in lab.test_visibility
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names)
    ]


def _compare(solution: Solution, result: dict) -> list[str]:
    problems = []
    verdict, reason, score = result.get("verdict"), result.get("reason"), result.get("score")
    if verdict == "error":
        return [f"the grader failed: {result.get('detail') or result.get('summary')}"]
    if verdict != solution.expected_verdict:
        problems.append(f"verdict {verdict} ({reason or 'no reason'}), expected {solution.expected_verdict}")
    if solution.expected_reason and reason != solution.expected_reason:
        problems.append(f"reason {reason!r}, expected {solution.expected_reason!r}")
    if solution.kind == "starter" and not solution.expected_reason and reason not in STARTER_REASONS:
        problems.append(f"the starter must import and fail its tests cleanly, but got reason {reason!r}")
    expected_score = 100.0 if solution.kind == "correct" else solution.expected_score
    if expected_score is not None and score != expected_score:
        problems.append(f"score {score}, expected {expected_score:g}")
    shown = "\n".join([result.get("summary", "")] + [t.get("message", "") for t in result.get("tests", [])])
    for fragment in solution.expected_messages:
        if fragment not in shown:
            problems.append(f"message {fragment!r} not shown (summary: {result.get('summary', '')[:200]!r})")
    return problems

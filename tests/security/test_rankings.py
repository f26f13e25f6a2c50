"""Nothing that decides a rank runs where the student's code runs (docs/security.md, invariants 1-4).

Attacks on a timed case of the timed_lab fixture lab, sent to a real grading worker: each class of
attack that bought a leaderboard in the first catalog, aimed at the timing phase. Each gets a
verdict that does not depend on how fast anything ran.
"""

from __future__ import annotations

LIMITS = {"wall_seconds": 30}


def test_precomputing_from_what_the_job_already_holds_fails_the_timed_calls(worker):
    # The inputs of a timed call exist only from the moment the call starts: a submission that
    # answers timed calls from what it saw earlier (here, the last test's inputs) is wrong there.
    graded = worker.grade(
        """
seen = {}

def affine(x, w, b):
    if x.numel() == 200_000 and "out" in seen:
        return seen["out"]
    out = x * w + b
    seen["out"] = out
    return out
""",
        lab="timed_lab",
        limits=LIMITS,
    )
    assert (graded.verdict, graded.reason) == ("failed", "wrong_answer"), graded.summary
    assert "returned a wrong 'out'" in graded.tests["benchmark"]["message"]


def test_slowing_the_reference_from_the_student_module_does_nothing(worker):
    # The reference is timed in its own sandbox, where this module never ran: were it loaded
    # there, the reference would sleep for an hour and the job end at its time limit.
    graded = worker.grade(
        """
import time, torch

def stall(*args, **kwargs):
    time.sleep(3600)

torch.Tensor.addcmul = stall
torch.addcmul = stall

def affine(x, w, b):
    return x * w + b
""",
        lab="timed_lab",
        limits=LIMITS,
    )
    assert (graded.verdict, graded.score) == ("succeeded", 100.0), graded.summary
    assert "separate clean process" in graded.tests["benchmark"]["message"]


def test_background_threads_are_frozen_while_the_reference_runs(worker):
    graded = worker.grade(
        """
import threading

def spin():
    while True:
        pass

for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()

def affine(x, w, b):
    return x * w + b
""",
        lab="timed_lab",
        limits=LIMITS,
    )
    assert graded.verdict == "succeeded", graded.summary
    assert "cannot freeze" not in graded.tests["benchmark"]["message"]


def test_the_digits_labels_that_ship_with_scikit_learn_are_not_in_the_sandbox(worker):
    # Invariant 3: held-out labels never enter the sandbox, not even through an installed package.
    graded = worker.grade(
        """
import glob, os
found = []
try:
    from sklearn.datasets import load_digits
    found.append(len(load_digits().target))
except Exception as exc:
    found.append(type(exc).__name__)
found += glob.glob("/opt/venv/**/digits.csv.gz", recursive=True)

def double(x):
    raise ValueError(f"seen: {found}")
"""
    )
    message = graded.tests["double_0"]["message"]
    assert "seen: ['FileNotFoundError']" in message, message

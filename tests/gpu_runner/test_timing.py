"""The timing phase (gpu_runner/timing.py) on real sandboxes, with the timed_lab fixture lab.

Every assertion here is about what was computed, refused or reported, never about which of two
functions ran faster: a busy machine decides that.
"""

from __future__ import annotations

import re

import torch

from gpu_runner import timing
from gpu_runner.jobfolder import JobFolder
from tests.conftest import FIXTURE_LABS
from tests.gpu_runner.conftest import grade_source

LIMITS = {"wall_seconds": 30}
HONEST = """
def affine(x, w, b):
    return x * w + b
"""


def _tests(result) -> dict:
    return {t["name"]: t for t in result["tests"]}


def test_an_honest_solution_is_timed_against_the_reference_and_ranked():
    result, events = grade_source(HONEST, lab="timed_lab", limits=LIMITS)
    assert (result["verdict"], result["score"]) == ("succeeded", 100.0), result["summary"]
    bench = _tests(result)["benchmark"]
    assert bench["outcome"] == "passed"
    assert "over 8 interleaved pairs" in bench["message"] and "separate clean process" in bench["message"]
    assert "cannot freeze" not in bench["message"]  # this machine has a freezer: the reference ran alone
    assert result["metric"] is not None and result["metric"] > 0 and result["ranked"]
    order = [e["data"]["name"] for e in events if e["type"] == "test"]
    assert order[-1] == "benchmark"  # timed after every correctness test


def test_work_skipped_in_timed_calls_is_caught_by_the_fingerprints():
    result, _ = grade_source(
        """
def affine(x, w, b):
    if x.numel() == 200_000:
        return x  # only the benchmark is this big: skip the work there
    return x * w + b
""",
        lab="timed_lab",
        limits=LIMITS,
    )
    assert (result["verdict"], result["reason"]) == ("failed", "wrong_answer")
    message = _tests(result)["benchmark"]["message"]
    # Each call is caught unless its probe happens to land within tolerance (about 1 in 400 for a
    # call here); CI once saw call 1 slip through and call 2 caught, so any call may be the first.
    assert re.search(r"timed call [1-8] of 8 returned a wrong 'out'", message), message
    assert result["metric"] is None


def test_a_forged_completion_event_does_not_stop_the_clock_with_a_right_answer():
    result, _ = grade_source(
        """
import json, os
fd = int(os.environ["AISYS_EVENT_FD"])

def affine(x, w, b):
    if x.numel() == 200_000:  # say every call is done before doing any of them
        for n in range(-5, 20):
            os.write(fd, (json.dumps({"type": "called", "n": n, "fp": {"out": 0.0}}) + "\\n").encode())
    return x * w + b
""",
        lab="timed_lab",
        limits=LIMITS,
    )
    assert result["verdict"] == "failed"
    assert "returned a wrong 'out'" in _tests(result)["benchmark"]["message"]


def test_a_lazy_result_is_refused_inside_the_timed_call():
    result, _ = grade_source(
        """
import torch

class Later(torch.Tensor):
    pass

def affine(x, w, b):
    out = x * w + b
    return out.as_subclass(Later) if x.numel() == 200_000 else out
""",
        lab="timed_lab",
        limits=LIMITS,
    )
    message = _tests(result)["benchmark"]["message"]
    assert "raised an error in a warm-up call" in message and "timed() returned Later" in message, message


def test_the_reference_process_never_sees_the_student_module():
    # The submission would make the reference hang forever, were it ever loaded where the
    # reference is timed: the job then could only end at its time limit.
    result, _ = grade_source(
        """
import sys, time, torch

def stall(*args, **kwargs):
    time.sleep(3600)

torch.Tensor.addcmul = stall
sys.modules["torch"].addcmul = stall

def affine(x, w, b):
    return x * w + b
""",
        lab="timed_lab",
        limits=LIMITS,
    )
    assert (result["verdict"], result["score"]) == ("succeeded", 100.0), result["summary"]


def test_benchmarks_wait_for_correctness():
    result, events = grade_source("def affine(x, w, b):\n    return x + w + b\n", lab="timed_lab", limits=LIMITS)
    assert _tests(result)["benchmark"]["message"] == timing.NOT_TIMED
    assert not any("interleaved" in str(e["data"]) for e in events)


def test_call_inputs_travel_as_an_aligned_bundle(tmp_path):
    folder = JobFolder(tmp_path, sandboxed=False, mounted=False, disk_mb=8)
    (tmp_path / "runner" / timing.CALLS_DIR).mkdir(parents=True)
    inputs = {"x": torch.arange(10.0), "i": torch.tensor([[1, 2], [3, 4]]), "h": torch.ones(3, dtype=torch.float16)}
    name = timing.write_bundle(folder, {**inputs, "n": 7})
    data = (tmp_path / "runner" / timing.CALLS_DIR / name).read_bytes()
    size = int.from_bytes(data[:8], "little")
    import json

    header = json.loads(data[8 : 8 + size])
    assert header["values"] == {"n": 7}
    for key, dtype, shape, offset, nbytes in header["tensors"]:
        assert offset % 64 == 0
        got = torch.frombuffer(bytearray(data[offset : offset + nbytes]), dtype=getattr(torch, dtype)).reshape(shape)
        assert torch.equal(got, inputs[key])


def test_a_meter_is_counted_by_the_worker_where_the_student_cannot_reset_it():
    result, _ = grade_source(
        """
import sys

def affine(x, w, b):
    sys.modules["__main__"].Harness.meter("trial", -100)  # try to take trials back
    return x * w + b
""",
        lab="timed_lab",
        limits=LIMITS,
    )
    assert _tests(result)["metered"]["message"] == "the worker counted 3 trials; run() said 3"
    # In a timed call nothing is metered: the call gets -1 at once, not a wait until the wall time.
    assert result["verdict"] == "succeeded" and result["metric"] is not None, result["summary"]


CORRECT_ALLSUM = (FIXTURE_LABS / "ring_lab" / "solutions" / "correct" / "sol.py").read_text()


def test_a_distributed_timed_case_runs_its_calls_on_a_pool_of_ranks_against_gloo_in_a_clean_process():
    # The submission would make gloo's all_reduce hang, were it ever loaded where the reference
    # runs (the red team slowed it this way when it was timed in the student's process).
    result, _ = grade_source(
        CORRECT_ALLSUM
        + """
import time
import torch.distributed.distributed_c10d as c10d

def stall(*args, **kwargs):
    time.sleep(3600)

c10d.ProcessGroup.allreduce = stall
""",
        lab="ring_lab",
        limits={"wall_seconds": 40},
    )
    assert (result["verdict"], result["score"]) == ("succeeded", 100.0), result["summary"]
    assert "over 6 interleaved pairs" in _tests(result)["benchmark"]["message"]


def test_a_rank_that_skips_its_share_in_a_timed_call_is_caught_and_named():
    result, _ = grade_source(
        CORRECT_ALLSUM.replace(
            "    t.copy_(total)", "    if t.numel() != 100_000 or rank == 0:\n        t.copy_(total)"
        ),
        lab="ring_lab",
        limits={"wall_seconds": 40},
    )
    message = _tests(result)["benchmark"]["message"]
    assert result["verdict"] == "failed" and "returned a wrong 'out@1'" in message, message


def test_a_rank_that_raises_in_a_timed_call_is_named():
    result, _ = grade_source(
        CORRECT_ALLSUM.replace(
            "    t.copy_(total)",
            "    if t.numel() == 100_000 and rank == 1:\n        raise OSError('rank 1 gives up')\n    t.copy_(total)",
        ),
        lab="ring_lab",
        limits={"wall_seconds": 40},
    )
    message = _tests(result)["benchmark"]["message"]
    assert "rank 1 of 2: raised OSError: rank 1 gives up" in message, message

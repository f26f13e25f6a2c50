"""The runner end to end on real processes: harness, launcher limits, verdicts, events.

No Django here, as on a worker: a tiny fixture lab (tests/fixtures/labs/echo_lab) keeps each
grading to about a second.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.gpu_runner.conftest import grade_source

CORRECT = """
    def double(x):
        return x * 2
"""


def test_correct_submission_passes_with_metric_and_ordered_events():
    result, events = grade_source(CORRECT)
    assert result["verdict"] == "succeeded"
    assert result["score"] == 100.0
    assert result["metric"] == 1.5
    assert [t["outcome"] for t in result["tests"]] == ["passed"] * 4
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "status" and events[-1]["type"] == "result"
    assert [e["data"]["name"] for e in events if e["type"] == "test"] == ["double_0", "double_1", "double_2", "bench"]
    assert result["timings"]["process_start"] > 0


def test_forbidden_library_call_is_named():
    result, _ = grade_source("""
        import torch
        def double(x):
            return torch.add(x, x)
    """)
    assert result["verdict"] == "failed"
    assert result["reason"] == "forbidden_call"
    assert result["score"] == 0.0
    assert "forbidden call: torch.add()" in result["tests"][0]["message"]


def test_wrong_answer_says_where_and_by_how_much():
    result, _ = grade_source("""
        def double(x):
            y = x * 2
            y[3] += 0.5
            return y
    """)
    assert result["verdict"] == "failed" and result["reason"] == "wrong_answer"
    message = result["tests"][0]["message"]
    assert "double(x): max abs error 0.5" in message and "index (3,)" in message
    assert result["score"] == 0.0


def test_import_error_is_reported_with_the_exception():
    result, _ = grade_source("def double(x):\n    return x *\n")
    assert result["verdict"] == "failed"
    assert result["reason"] == "import_error"
    assert "SyntaxError" in result["summary"]


def test_exception_in_one_case_fails_that_case_only():
    result, _ = grade_source("""
        calls = 0
        def double(x):
            global calls
            calls += 1
            if calls == 2:
                raise ValueError("second call explodes")
            return x * 2
    """)
    outcomes = {t["name"]: (t["outcome"], t["message"]) for t in result["tests"]}
    assert outcomes["double_0"][0] == "passed" and outcomes["double_2"][0] == "passed"
    assert outcomes["double_1"][0] == "failed"
    assert "raised ValueError: second call explodes" in outcomes["double_1"][1]
    assert result["score"] == pytest.approx(66.67)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("import os; os._exit(7)", "exited with code 7"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "killed by SIGSEGV"),
    ],
)
def test_crash_is_reported_with_exit_code_or_signal(body, expected):
    result, _ = grade_source(f"""
        def double(x):
            print("about to crash", flush=True)
            {body}
    """)
    assert result["verdict"] == "failed" and result["reason"] == "crashed"
    assert expected in result["summary"] and "double_0" in result["summary"]
    assert "about to crash" in result["output_tail"]
    assert all(t["outcome"] == "failed" for t in result["tests"])


def test_print_flood_is_stopped_at_the_output_limit_with_its_tail():
    result, events = grade_source("""
        import sys
        def double(x):
            for i in range(10_000_000):
                sys.stdout.write(f"line {i} " + "x" * 90 + "\\n")
    """)
    assert result["verdict"] == "failed" and result["reason"] == "output_limit"
    assert "more than 100000 bytes" in result["summary"]
    assert "line " in result["output_tail"] and len(result["output_tail"]) <= 8192
    logged = sum(len(e["data"]["text"]) for e in events if e["type"] == "log")
    assert logged <= 100_000


def test_sleeping_forever_times_out_with_the_output_tail():
    result, _ = grade_source(
        """
        import time
        def double(x):
            print("going to sleep", flush=True)
            time.sleep(3600)
    """,
        limits={"wall_seconds": 3},
    )
    assert result["verdict"] == "timed_out" and result["reason"] == "time_limit"
    assert "more than 3 s" in result["summary"] and "double_0" in result["summary"]
    assert "going to sleep" in result["output_tail"]


def test_leftover_processes_are_killed():
    marker = f"aisys-test-orphan-{os.getpid()}"
    result, _ = grade_source(f"""
        import subprocess
        subprocess.Popen(["sh", "-c", "exec -a {marker} sleep 600"], start_new_session=False)
        def double(x):
            return x * 2
    """)
    assert result["verdict"] == "succeeded"
    time.sleep(0.3)
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    assert found.stdout.strip() == "", "a process the submission started outlived its job"


def test_mutating_inputs_cannot_change_what_is_checked():
    result, _ = grade_source("""
        def double(x):
            x.mul_(2)
            return x
    """)
    assert result["verdict"] == "succeeded"


def test_returning_a_tensor_subclass_is_rejected():
    result, _ = grade_source("""
        import torch
        class Lazy(torch.Tensor):
            pass
        def double(x):
            return (x * 2).as_subclass(Lazy)
    """)
    assert result["verdict"] == "failed"
    assert "other than plain tensors" in result["tests"][0]["message"]


def test_worker_with_another_lab_version_reports_an_infrastructure_error():
    result, _ = grade_source(CORRECT, version=99)
    assert result["verdict"] == "error" and result["reason"] == "infrastructure"
    assert "version 1 but the job needs version 99" in result["summary"]


def test_file_not_allowed_by_the_lab_is_an_error_not_a_crash():
    result, _ = grade_source(CORRECT, extra={"evil.py": "x = 1"})
    assert result["verdict"] == "error"
    assert "not allowed" in result["summary"]


def test_forbidden_names_may_be_methods_of_classes():
    import torch

    from gpu_runner.harness import Harness, _resolve

    assert _resolve("torch.nn.functional.linear") == (torch.nn.functional, "linear")
    assert _resolve("torch.Tensor.softmax") == (torch.Tensor, "softmax")
    harness = Harness(["torch.Tensor.softmax"])
    original = torch.Tensor.softmax
    try:
        harness.patch()
        with pytest.raises(Exception, match=r"forbidden call: softmax\(\)|forbidden call: torch.Tensor.softmax"):
            torch.ones(3).softmax(0)
        assert harness.original("torch.Tensor.softmax") is original
    finally:
        torch.Tensor.softmax = original


def test_output_says_whether_it_was_printed_once_the_inputs_were_in_the_sandbox():
    """The portal withholds output printed after the inputs arrived from a student with hidden tests
    (policies.TestView). Whatever the code printed once it had the inputs is marked so, always; what
    it printed while importing is marked as before when the worker read it before the import's end
    (two pipes: a chunk read later is marked as after, which only withholds more)."""
    _, events = grade_source("""
        import sys
        print("at import", flush=True)
        def double(x):
            print(f"got {x}", flush=True)
            return 2 * x
    """)
    output = [e["data"] for e in events if e["type"] == "log" and e["data"]["stream"] == "output"]
    text = "".join(d["text"] for d in output)
    assert "at import" in text and "got " in text
    assert all(d["inputs"] for d in output if "got " in d["text"])
    assert all("got " not in d["text"] for d in output if not d["inputs"])
    assert all(isinstance(d["inputs"], bool) for d in output)

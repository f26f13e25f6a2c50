"""The messages between the portal and the workers (labs/protocol.py): built by one side, refused
whole by the other when they do not follow the protocol, with a message that says why."""

from __future__ import annotations

import math

import pytest

from gpu_runner.tasks import run_job
from labs import protocol
from labs.protocol import PROTOCOL, JobMessage, JobResult, ProtocolError, SelfCheckReport, Task, Verdict

MESSAGE = JobMessage(
    job_id=42,
    lab_slug="echo_lab",
    lab_version=3,
    files={"sol.py": "def double(x):\n    return 2 * x\n"},
    limits={"wall_seconds": 8, "memory_mb": 512},
    seed=2**61,
    owner="user-7",
    events_stream="aisys:job:42:ab:events",
    resource_class="cpu",
    dispatched_at=1.5,
)


def test_a_job_message_survives_the_wire():
    wire = MESSAGE.to_dict()
    assert wire["protocol"] == PROTOCOL and wire["lab"] == {"slug": "echo_lab", "version": 3}
    assert JobMessage.from_dict(wire) == MESSAGE


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"protocol": 1}, "is protocol 1 and this worker speaks protocol 2"),
        ({"protocol": None}, "deploy the same version"),
        ({"lab": {"slug": "../etc", "version": 1}}, "is not a lab slug"),
        ({"lab": {"slug": "echo_lab", "version": "1"}}, "'version' must be int"),
        ({"files": {"../x.py": "x"}}, "must be a module name"),
        ({"files": {}}, "1 to 16 files"),
        ({"limits": {"wall_seconds": -1}}, "must be positive"),
        ({"limits": {"gpus": 8}}, "unknown limit 'gpus'"),
        ({"limits": {"wall_seconds": math.inf}}, "finite number"),
        ({"seed": True}, "'seed' must be int, got a bool"),
        ({"events_stream": "a b"}, "not a stream key"),
    ],
)
def test_a_malformed_job_message_is_refused_with_the_reason(change, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        JobMessage.from_dict({**MESSAGE.to_dict(), **change})


def test_the_worker_refuses_a_malformed_job_whole_and_says_why():
    result = run_job({**MESSAGE.to_dict(), "protocol": 1})
    assert (result["verdict"], result["reason"], result["job_id"]) == ("error", "bad_message", 42)
    assert "protocol 1" in result["summary"] and "not your fault" in result["summary"]
    assert JobResult.from_dict(result).verdict == Verdict.ERROR  # the portal can read the refusal


def test_a_result_survives_the_wire_and_a_malformed_one_is_refused():
    result = JobResult(
        job_id=42,
        verdict=Verdict.SUCCEEDED,
        reason="",
        score=100.0,
        metric=1.25,
        summary="All 3 tests passed.",
        tests=[protocol.TestResult(name="double_0", points=1.0, outcome="passed")],
        ranked=True,
    )
    assert JobResult.from_dict(result.to_dict()) == result
    for change, complaint in (
        ({"verdict": "great"}, "verdict 'great'"),
        ({"score": 101}, "not within 0 to 100"),
        ({"metric": math.nan}, "finite number"),
        ({"tests": [{"name": "x", "points": 1, "outcome": "maybe"}]}, "outcome 'maybe'"),
        ({"summary": 3}, "'summary' must be str"),
    ):
        with pytest.raises(ProtocolError, match=complaint):
            JobResult.from_dict({**result.to_dict(), **change})


def test_a_self_check_report_is_validated():
    report = SelfCheckReport(ok=True, problems=[], solutions=[{"solution": "correct", "ok": True}], worker="w")
    assert SelfCheckReport.from_dict(report.to_dict()) == report
    with pytest.raises(ProtocolError, match="'ok' must be bool"):
        SelfCheckReport.from_dict({**report.to_dict(), "ok": "yes"})


def test_task_names_survive_celery_signatures():
    # Celery names a signature after its task object's ``name`` attribute: an enum member would
    # link results to a task called "RECORD_JOB_RESULT", which no worker has.
    from portal.celery import app

    signature = app.signature(Task.RECORD_JOB_RESULT, kwargs={"job_id": 1}, queue="portal")
    assert dict(signature)["task"] == "portal.record_job_result"

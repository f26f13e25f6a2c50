"""The whole loop on real processes: HTTP submission -> Redis -> Celery grading worker ->
result task -> database, for every solution the custom_op lab ships, plus hostile output."""

from __future__ import annotations

import time

import pytest

from labs.catalog import find_lab
from portal.submissions.models import Job
from tests.e2e.conftest import login, submit, wait_final

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PRINT_FLOOD = """
import sys
for i in range(200_000):
    sys.stdout.write(f"flood line {i} " + "x" * 40 + "\\n")
"""
SLEEPER = """
import time
print("starting a long nap", flush=True)
time.sleep(3600)
"""


def test_every_solution_gets_its_verdict_and_the_worker_keeps_going(live_stack, cast, custom_op):
    lab = find_lab("custom_op")
    client = login(live_stack.base_url, "alice")
    path = f"/courses/{custom_op.course.slug}/{custom_op.slug}/"
    submitted = {s.name: (s, submit(client, path, s.files["linear_op.py"])) for s in lab.solutions()}
    flood_job = submit(client, path, PRINT_FLOOD)
    sleeper_job = submit(client, path, SLEEPER)
    after_all = submit(client, path, lab.solutions()[1].files["linear_op.py"])  # correct, queued last

    assert {s.name for s, _ in submitted.values()} >= {
        "starter",
        "correct",
        "calls_f_linear",
        "wrong_bias_grad",
        "ignores_needs_input_grad",
        "crashes",
    }
    for name, (solution, job_id) in submitted.items():
        status = wait_final(client, job_id)
        job = Job.objects.get(pk=job_id)
        messages = "\n".join(t["message"] for t in job.result["tests"]) + job.summary
        assert status["state"] == solution.expected_verdict, f"{name}: {status}"
        for expected in solution.expected_messages:
            assert expected in messages, f"{name}: '{expected}' not in {messages[:1500]}"
        if name == "correct":
            assert status["score"] == 100.0 and status["metric"] > 0
            assert [t["outcome"] for t in job.result["tests"]] == ["passed"] * len(job.result["tests"])
        else:
            if solution.expected_score is not None:  # e.g. a benchmark cheat keeps its correctness points
                assert status["score"] == solution.expected_score, name
            if solution.expected_verdict != "succeeded":  # an attack that can no longer gain anything passes
                assert any(t["outcome"] == "failed" for t in job.result["tests"]), name
        events = list(job.events.order_by("seq").values_list("seq", "type"))
        assert events and events[-1][1] == "result" and [s for s, _ in events] == list(range(1, len(events) + 1))
        timings = job.result["timings"]
        assert timings["queue_wait"] >= 0 and timings["process_start"] > 0

    flood = wait_final(client, flood_job)
    assert flood["state"] == "failed" and flood["reason"] == "output_limit"
    assert "flood line" in Job.objects.get(pk=flood_job).output_tail

    nap = wait_final(client, sleeper_job)
    assert nap["state"] == "timed_out" and "more than 30 s" in nap["summary"]
    assert "starting a long nap" in Job.objects.get(pk=sleeper_job).output_tail

    last = wait_final(client, after_all)
    assert last["state"] == "succeeded" and last["score"] == 100.0

    board = client.get(f"{path}leaderboard/").text
    assert "<td>1</td><td>alice</td><td>100</td>" in board.replace("\n", "")


def test_a_job_whose_worker_dies_is_graded_again_and_nothing_is_lost(live_stack, cast, custom_op):
    client = login(live_stack.base_url, "bob")
    path = f"/courses/{custom_op.course.slug}/{custom_op.slug}/"
    slow_correct = find_lab("custom_op").solutions()[1].files["linear_op.py"] + "\nimport time\ntime.sleep(6)\n"
    job_id = submit(client, path, slow_correct)
    deadline = time.monotonic() + 60
    while client.get(f"/api/jobs/{job_id}/").json()["state"] != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    live_stack.kill("worker-grading")  # mid-job, like an OOM kill of the whole worker
    live_stack.restart("worker-grading")

    deadline = time.monotonic() + 120
    while (status := client.get(f"/api/jobs/{job_id}/").json())["latest_job_id"] == job_id:
        assert time.monotonic() < deadline, f"the lost job was never retried: {status}"
        time.sleep(0.25)
    lost = Job.objects.get(pk=job_id)
    assert lost.state == Job.State.ERROR and lost.reason == "worker_lost"
    retried = wait_final(client, status["latest_job_id"])
    assert retried["state"] == "succeeded", (retried["summary"], Job.objects.get(pk=retried["id"]).result)
    assert retried["attempt"] == 2 and retried["score"] == 100.0

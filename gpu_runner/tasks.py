"""The job task: one self-contained message in, one result message out (to the portal queue)."""

from __future__ import annotations

import base64
import logging
import socket
import tempfile
import time
from functools import cache
from pathlib import Path

import redis
from celery.signals import worker_ready

from gpu_runner import sandbox, settings
from gpu_runner.celery import app
from gpu_runner.events import RedisStreamSink
from gpu_runner.grading import grade
from gpu_runner.selfcheck import check_lab
from gpu_runner.text import for_terminal
from labs import archive
from labs.catalog import LabError

log = logging.getLogger(__name__)


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.current().redis_url)


@worker_ready.connect
def announce_sandbox(**_) -> None:
    """Say in the worker's log how jobs will be confined, or why every job will be refused."""
    sandbox.log_startup()


@app.task(name="gpu_runner.run_job", bind=True)
def run_job(self, message: dict) -> dict:
    """Grade one job. The result is returned, and the task's link (set by the portal) records it."""
    job_id = message["job_id"]
    app.send_task(
        "portal.record_job_started",
        kwargs={"job_id": job_id, "worker": socket.gethostname(), "started_at": time.time()},
        queue=settings.current().portal_queue,
    )
    sink = RedisStreamSink(_redis(), message["events_stream"])
    result = grade(message, sink)
    log.info(
        "job %s: %s (%s) in %.2fs",
        job_id,
        result["verdict"],
        for_terminal(result["summary"][:200]),
        result["timings"].get("worker_total", 0.0),
    )
    return result


@app.task(name="gpu_runner.check_lab")
def check_uploaded_lab(message: dict) -> dict:
    """Self-check an uploaded lab: unpack its zip here and grade every shipped solution.

    The report goes back to the portal (the task's link), which allows publishing only when
    ``ok``. The lab's grader is instructor code: it runs here as built-in graders do.
    """
    with tempfile.TemporaryDirectory(prefix="aisys-lab-check-") as scratch:
        try:
            lab = archive.unpack(base64.b64decode(message["archive"]), Path(scratch))
        except LabError as exc:
            return {"ok": False, "problems": [str(exc)], "solutions": [], "worker": socket.gethostname()}
        started = time.monotonic()
        problems, checks = check_lab(lab, owner=f"upload-{message['upload_id']}")
    report = {
        "ok": not problems and all(c.ok for c in checks),
        "problems": problems,
        "solutions": [c.as_dict() for c in checks],
        "worker": socket.gethostname(),
        "seconds": round(time.monotonic() - started, 1),
    }
    log.info(
        "uploaded lab %s: check %s in %.1fs",
        message.get("slug"),
        "passed" if report["ok"] else "failed",
        report["seconds"],
    )
    return report

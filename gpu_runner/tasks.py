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
from gpu_runner.selfcheck import self_check_lab
from gpu_runner.text import for_terminal
from labs import archive
from labs.catalog import LabError
from labs.protocol import JobMessage, JobResult, ProtocolError, SelfCheckMessage, SelfCheckReport, Task, Verdict

log = logging.getLogger(__name__)


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.current().redis_url)


@worker_ready.connect
def announce_sandbox(**_) -> None:
    """Say in the worker's log how jobs will be confined, or why every job will be refused."""
    sandbox.log_startup()


@app.task(name=Task.RUN_JOB, bind=True)
def run_job(self, message: dict) -> dict:
    """Grade one job. The result is returned, and the task's link (set by the portal) records it.

    A message that does not follow the protocol is refused whole: the result says why, as an
    infrastructure error (the portal's or the deployment's fault, never the student's).
    """
    try:
        job = JobMessage.from_dict(message)
    except ProtocolError as exc:
        log.error("refused a malformed job message: %s", exc)
        job_id = message.get("job_id") if isinstance(message, dict) else None
        return JobResult(
            job_id=job_id if isinstance(job_id, (int, str)) else "unknown",
            verdict=Verdict.ERROR,
            reason="bad_message",
            score=0.0,
            metric=None,
            summary=f"The grader refused the job (not your fault; it is retried): {exc}",
            worker=socket.gethostname(),
        ).to_dict()
    app.send_task(
        Task.RECORD_JOB_STARTED,
        kwargs={"job_id": job.job_id, "worker": socket.gethostname(), "started_at": time.time()},
        queue=settings.current().portal_queue,
    )
    result = grade(job, RedisStreamSink(_redis(), job.events_stream))
    log.info(
        "job %s: %s (%s) in %.2fs",
        job.job_id,
        result["verdict"],
        for_terminal(result["summary"][:200]),
        result["timings"].get("worker_total", 0.0),
    )
    return result


@app.task(name=Task.SELF_CHECK_LAB)
def self_check_uploaded_lab(message: dict) -> dict:
    """Self-check an uploaded lab: unpack its zip here and grade every shipped solution.

    The report goes back to the portal (the task's link), which allows publishing only when
    ``ok``. The lab's grader is instructor code: it runs here as built-in graders do.
    """
    try:
        upload = SelfCheckMessage.from_dict(message)
    except ProtocolError as exc:
        return SelfCheckReport(ok=False, problems=[str(exc)], solutions=[], worker=socket.gethostname()).to_dict()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aisys-lab-check-") as scratch:
        try:
            lab = archive.unpack(base64.b64decode(upload.archive), Path(scratch))
        except (LabError, ValueError) as exc:
            return SelfCheckReport(ok=False, problems=[str(exc)], solutions=[], worker=socket.gethostname()).to_dict()
        problems, checks = self_check_lab(lab, owner=f"upload-{upload.upload_id}")
    report = SelfCheckReport(
        ok=not problems and all(c.ok for c in checks),
        problems=problems,
        solutions=[c.as_dict() for c in checks],
        worker=socket.gethostname(),
        seconds=round(time.monotonic() - started, 1),
    )
    log.info(
        "uploaded lab %s: self-check %s in %.1fs", upload.slug, "passed" if report.ok else "failed", report.seconds
    )
    return report.to_dict()

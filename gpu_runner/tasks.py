"""The job task: one self-contained message in, one result message out (to the portal queue)."""

from __future__ import annotations

import logging
import os
import socket
import time
from functools import cache

import redis
from celery.signals import worker_ready

from gpu_runner import sandbox
from gpu_runner.celery import REDIS_URL, app
from gpu_runner.events import RedisStreamSink
from gpu_runner.grading import grade

log = logging.getLogger(__name__)
PORTAL_QUEUE = os.environ.get("AISYS_PORTAL_QUEUE", "portal")


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


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
        queue=PORTAL_QUEUE,
    )
    sink = RedisStreamSink(_redis(), message["events_stream"])
    result = grade(message, sink)
    log.info(
        "job %s: %s (%s) in %.2fs",
        job_id,
        result["verdict"],
        result["summary"][:200],
        result["timings"].get("worker_total", 0.0),
    )
    return result

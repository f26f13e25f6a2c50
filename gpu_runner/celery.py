"""The grading workers' Celery app: consumes ``cpu`` / ``gpu`` queues, knows nothing of the database."""

from __future__ import annotations

from celery import Celery

from gpu_runner import settings

app = Celery("gpu_runner", broker=settings.current().redis_url, include=["gpu_runner.tasks"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,  # a job whose worker dies is not silently dropped
    worker_prefetch_multiplier=1,  # one job at a time per process: GPU memory and fairness
    task_ignore_result=True,  # results travel back as a message to the portal queue
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 3600},
    worker_hijack_root_logger=False,
)

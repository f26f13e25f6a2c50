"""The portal's Celery app: records results, dispatches queued jobs and reaps lost ones.

It consumes only the ``portal`` queue; grading runs on the gpu_runner workers, reached by task
name (``send_task``), never by import.
"""

from __future__ import annotations

import os

from celery import Celery

from labs.protocol import Task

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue="portal",
    broker_connection_retry_on_startup=True,
    # Publishing from a web request must fail fast when Redis is away (the job stays queued and
    # the sweeper dispatches it later) instead of retrying for seconds inside the request.
    broker_transport_options={"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
    worker_hijack_root_logger=False,
    beat_schedule={
        "dispatch-and-reap": {
            "task": Task.JOBS_SWEEP,
            "schedule": float(os.environ.get("JOB_DISPATCH_INTERVAL_SECONDS", "5")),
            "options": {"queue": "portal", "expires": 30},
        }
    },
)
app.autodiscover_tasks(["portal.submissions", "portal.catalog", "portal.lti"])

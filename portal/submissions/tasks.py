"""The portal queue's tasks: thin wrappers over services, idempotent."""

from __future__ import annotations

from celery import shared_task

from labs.protocol import Task
from portal.submissions import services


@shared_task(name=Task.RECORD_JOB_STARTED)
def record_job_started(*, job_id: int, worker: str, started_at: float) -> None:
    services.job_mark_started(job_id=job_id, worker=worker, started_at=started_at)


@shared_task(name=Task.RECORD_JOB_RESULT, bind=True, max_retries=5, default_retry_delay=5)
def record_job_result(self, result: dict, job_id: int) -> None:
    """Linked to ``Task.RUN_JOB`` by the dispatcher: receives its return value."""
    try:
        services.job_record_result(job_id=job_id, result=result)
    except Exception as exc:  # the database was unreachable, say: retry, boundedly
        raise self.retry(exc=exc)


@shared_task(name=Task.JOBS_SWEEP)
def jobs_sweep() -> dict:
    """Periodic (beat): dispatch what is queued, reap silent jobs, finish pending archives."""
    return {
        "dispatched": services.jobs_dispatch_queued(),
        "reaped": services.jobs_reap(),
        "archived": services.jobs_archive_pending(),
    }

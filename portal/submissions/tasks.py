"""The portal queue's tasks: thin wrappers over services, idempotent."""

from __future__ import annotations

from celery import shared_task

from portal.submissions import services


@shared_task(name="portal.record_job_started")
def record_job_started(*, job_id: int, worker: str, started_at: float) -> None:
    services.job_mark_started(job_id=job_id, worker=worker, started_at=started_at)


@shared_task(name="portal.record_job_result", bind=True, max_retries=5, default_retry_delay=5)
def record_job_result(self, result: dict, job_id: int) -> None:
    """Linked to ``gpu_runner.run_job`` by the dispatcher: receives its return value."""
    try:
        services.job_record_result(job_id=job_id, result=result)
    except Exception as exc:  # the database was unreachable, say: retry, boundedly
        raise self.retry(exc=exc)


@shared_task(name="portal.jobs_sweep")
def jobs_sweep() -> dict:
    """Periodic (beat): dispatch what is queued, reap silent jobs, finish pending archives."""
    return {
        "dispatched": services.jobs_dispatch_queued(),
        "reaped": services.jobs_reap(),
        "archived": services.jobs_archive_pending(),
    }

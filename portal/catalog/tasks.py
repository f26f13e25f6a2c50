"""The portal queue's tasks for uploaded labs: thin wrappers over services."""

from __future__ import annotations

from celery import shared_task

from portal.catalog import uploads


@shared_task(name="portal.record_lab_check", bind=True, max_retries=5, default_retry_delay=5)
def record_lab_check(self, report: dict, upload_id: int) -> None:
    """Linked to ``gpu_runner.check_lab``: receives its report."""
    try:
        uploads.lab_upload_record_check(upload_id=upload_id, report=report)
    except Exception as exc:  # the database was unreachable, say: retry, boundedly
        raise self.retry(exc=exc)

"""The portal queue's tasks for uploaded labs: thin wrappers over services."""

from __future__ import annotations

from celery import shared_task

from labs.protocol import Task
from portal.catalog import uploads


@shared_task(name=Task.RECORD_LAB_SELF_CHECK, bind=True, max_retries=5, default_retry_delay=5)
def record_lab_self_check(self, report: dict, upload_id: int) -> None:
    """Linked to ``Task.SELF_CHECK_LAB``: receives its report."""
    try:
        uploads.lab_upload_record_self_check(upload_id=upload_id, report=report)
    except Exception as exc:  # the database was unreachable, say: retry, boundedly
        raise self.retry(exc=exc)

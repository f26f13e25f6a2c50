"""Labs uploaded as zips from the staff pages: validate, self-check on a worker, publish.

A zip is vetted (paths, links, sizes, lab.toml, the grader's three functions) before anything is
stored, so a bad one gets a message that says what to fix and leaves nothing behind. A good one is
stored and sent to a worker of its resource class, which unpacks it and runs ``lab check`` (every
shipped solution through the real runner); only a lab whose check passed can be published, which
unpacks it into the uploaded-labs folder that portal and workers share, and syncs the catalog.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import tempfile
from pathlib import Path

from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError

from labs import archive, catalog
from labs.protocol import ProtocolError, SelfCheckMessage, SelfCheckReport, Task
from portal.catalog.models import Lab, LabUpload
from portal.catalog.services import lab_sync_all
from portal.celery import app as celery_app

log = logging.getLogger(__name__)


class LabUploadError(Exception):
    """The upload is refused; the message says what to fix."""


def lab_upload_create(*, user, data: bytes) -> LabUpload:
    """Validate the zip and store it; its self-check is dispatched once the row is committed."""
    try:
        lab = archive.validate(data)
    except catalog.LabError as exc:
        raise LabUploadError(str(exc)) from None
    if (catalog.LABS_ROOT / lab.slug).exists():
        raise LabUploadError(f"'{lab.slug}' is a built-in lab; give yours another slug in lab.toml")
    current = Lab.objects.filter(slug=lab.slug).first()
    if current is not None and lab.version <= current.version:
        raise LabUploadError(
            f"'{lab.slug}' is already published at version {current.version}; bump 'version' in lab.toml "
            f"(results record which version graded them)"
        )
    upload = LabUpload.objects.create(
        uploaded_by=user,
        slug=lab.slug,
        version=lab.version,
        title=lab.title,
        resource_class=lab.resource_class,
        archive=data,
        archive_sha256=hashlib.sha256(data).hexdigest(),
        message="Waiting for a worker to grade the lab's starter and solutions.",
    )
    transaction.on_commit(lambda: lab_upload_dispatch_self_check(upload_id=upload.pk))
    return upload


def lab_upload_self_check_message(*, upload: LabUpload) -> SelfCheckMessage:
    return SelfCheckMessage(
        upload_id=upload.pk, slug=upload.slug, archive=base64.b64encode(bytes(upload.archive)).decode()
    )


def lab_upload_dispatch_self_check(*, upload_id: int) -> bool:
    """Send the self-check to a worker; False (the upload waits, 'check again' retries) if the broker is down."""
    upload = LabUpload.objects.filter(pk=upload_id).first()
    if upload is None or upload.state == LabUpload.State.PUBLISHED:
        return False
    try:
        celery_app.send_task(
            Task.SELF_CHECK_LAB,
            args=[lab_upload_self_check_message(upload=upload).to_dict()],
            queue=upload.resource_class.split(".")[0],
            link=celery_app.signature(Task.RECORD_LAB_SELF_CHECK, kwargs={"upload_id": upload.pk}, queue="portal"),
            retry=False,
        )
    except (BrokerError, RedisError, OSError) as exc:
        log.warning("lab upload %s: check not sent, the broker is unreachable (%s)", upload.pk, exc)
        LabUpload.objects.filter(pk=upload.pk).update(
            message="The job queue is unreachable; press 'check again' when it is back."
        )
        return False
    LabUpload.objects.filter(pk=upload.pk).update(state=LabUpload.State.CHECKING, message="Being checked by a worker.")
    return True


def lab_upload_record_self_check(*, upload_id: int, report: dict) -> LabUpload | None:
    """Store a worker's self-check report; one that does not follow the protocol fails the check."""
    try:
        report = SelfCheckReport.from_dict(report).to_dict()
    except ProtocolError as exc:
        report = SelfCheckReport(
            ok=False, problems=[f"the worker's report could not be read: {exc}"], solutions=[], worker=""
        ).to_dict()
    with transaction.atomic():
        upload = LabUpload.objects.select_for_update().filter(pk=upload_id).first()
        if upload is None or upload.state == LabUpload.State.PUBLISHED:
            return upload
        upload.report = report
        upload.state = LabUpload.State.PASSED if report["ok"] else LabUpload.State.FAILED
        upload.message = _summary(report)
        upload.checked_at = timezone.now()
        upload.save(update_fields=["report", "state", "message", "checked_at"])
    return upload


def _summary(report: dict) -> str:
    solutions = report.get("solutions", [])
    bad = [s for s in solutions if not s.get("ok")]
    problems = list(report.get("problems", []))
    problems += [f"{s['solution']}: {'; '.join(s['problems'])}" for s in bad]
    if report.get("ok"):
        return f"All {len(solutions)} solutions got the outcome they promise; the lab can be published."
    return "The check failed:\n" + "\n".join(problems)


def lab_upload_publish(*, upload: LabUpload) -> Lab:
    """Unpack a checked lab into the uploaded-labs folder (replacing an older version) and sync it."""
    if upload.state != LabUpload.State.PASSED:
        raise LabUploadError("only a lab whose check passed can be published")
    root = catalog.UPLOADED_LABS_ROOT
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".publish-", dir=root) as scratch:
        try:
            staged = archive.unpack(bytes(upload.archive), Path(scratch))
        except catalog.LabError as exc:
            raise LabUploadError(str(exc)) from None
        target = root / upload.slug
        retired = Path(scratch) / "previous"
        if target.exists():
            target.rename(retired)
        staged.path.rename(target)
    with transaction.atomic():
        lab_sync_all()
        upload.state = LabUpload.State.PUBLISHED
        upload.published_at = timezone.now()
        upload.message = f"Published: {upload.slug} version {upload.version} can now be assigned."
        upload.save(update_fields=["state", "published_at", "message"])
    return Lab.objects.get(slug=upload.slug)

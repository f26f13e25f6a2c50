"""Keep the database's copy of the catalog in step with labs/ (``manage.py sync_labs``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction

from labs.catalog import LabFolder, discover_labs
from portal.catalog.models import Lab, LabVersion
from portal.catalog.rendering import render_markdown


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _fields(folder: LabFolder) -> dict:
    metric = folder.metric
    return {
        "title": folder.title,
        "summary": folder.summary,
        "version": folder.version,
        "content_hash": folder.content_hash,
        "entry": folder.entry,
        "allowed_files": list(folder.allowed_files),
        "resource_class": folder.resource_class,
        "limits": folder.limits.as_dict(),
        "max_file_bytes": folder.max_file_bytes,
        "metric_name": metric.name if metric else "",
        "metric_unit": metric.unit if metric else "",
        "metric_direction": metric.direction if metric else "",
        "source_course": folder.source_course,
        "readme": folder.readme,
        "readme_html": render_markdown(folder.readme),
        "starter_files": folder.starter_files(),
        "test_visibility": [list(rule) for rule in folder.test_visibility],
        "is_available": True,
    }


@transaction.atomic
def lab_sync_all(*, root: Path | str | None = None) -> SyncReport:
    """Create or update a Lab row per folder; idempotent. Labs whose folder is gone are retired."""
    report = SyncReport()
    seen = set()
    for folder in discover_labs(root):
        seen.add(folder.slug)
        lab = Lab.objects.filter(slug=folder.slug).first()
        if lab is None:
            lab = Lab.objects.create(slug=folder.slug, **_fields(folder))
            report.created.append(folder.slug)
        elif lab.content_hash == folder.content_hash and lab.version == folder.version and lab.is_available:
            report.unchanged.append(folder.slug)
        else:
            if lab.version == folder.version and lab.content_hash != folder.content_hash:
                report.warnings.append(
                    f"{folder.slug}: files changed but version is still {folder.version}; bump 'version' in "
                    "lab.toml when the grader or tests change, so results say which version graded them"
                )
            if folder.version < lab.version:
                report.warnings.append(f"{folder.slug}: version went down from {lab.version} to {folder.version}")
            for name, value in _fields(folder).items():
                setattr(lab, name, value)
            lab.save()
            report.updated.append(folder.slug)
        LabVersion.objects.get_or_create(lab=lab, version=folder.version, content_hash=folder.content_hash)
    for lab in Lab.objects.filter(is_available=True).exclude(slug__in=seen):
        lab.is_available = False
        lab.save(update_fields=["is_available", "synced_at"])
        report.retired.append(lab.slug)
    return report

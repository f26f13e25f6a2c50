"""Every lab of the catalog, as a student meets it: open the assignment, read the instructions,
download the starter, paste the correct solution and get full marks from a live grading worker
(daphne, the portal worker and a grading worker that takes the cpu and gpu queues, as `make run`
starts them; without a GPU the GPU labs are graded in Triton's interpreter and come back
"correct; unranked: no GPU worker")."""

from __future__ import annotations

import io
import os
import zipfile
from datetime import timedelta

import pytest
import redis
import torch
from django.conf import settings
from django.utils import timezone

from labs.catalog import discover_labs
from portal.catalog.models import Lab
from portal.catalog.services import lab_sync_all
from portal.courses.services import assignment_create
from portal.devstack import Stack
from portal.submissions.models import Job
from tests.conftest import free_port
from tests.e2e.conftest import database_url, login, submit, wait_final

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LABS = {lab.slug: lab for lab in discover_labs()}


@pytest.fixture(scope="module")
def full_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    port = free_port()
    stack = Stack(
        env={
            "DJANGO_SETTINGS_MODULE": "portal.test_settings",
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "AISYS_CHANNEL_PREFIX": os.environ.get("AISYS_CHANNEL_PREFIX", "aisys-test"),
            "JOB_DISPATCH_INTERVAL_SECONDS": "1",
            "AISYS_COMPILE_CACHE": str(tmp_path_factory.mktemp("compile-cache")),
        },
        web_port=port,
        grading_queues=("cpu", "gpu"),
        grading_concurrency=2,
        log_dir=tmp_path_factory.mktemp("stack-logs"),
    )
    with stack:
        stack.base_url = f"http://127.0.0.1:{port}"
        yield stack
    redis.Redis.from_url(settings.REDIS_URL).flushdb()


def test_a_student_reads_downloads_submits_and_is_graded_on_every_lab(full_stack, cast):
    lab_sync_all()
    assignments = {
        slug: assignment_create(
            course=cast["course"],
            lab=Lab.objects.get(slug=slug),
            opens_at=timezone.now() - timedelta(hours=1),
            due_at=timezone.now() + timedelta(days=7),
        )
        for slug in LABS
    }
    client = login(full_stack.base_url, "alice")
    jobs = {}
    for slug, lab in LABS.items():
        path = f"/courses/{cast['course'].slug}/{assignments[slug].slug}/"
        page = client.get(path).text
        assert lab.title.split(":")[0] in page and "<h2" in page, slug  # the README, rendered
        starter = client.get(f"{path}starter.zip")
        assert starter.status_code == 200, slug
        names = zipfile.ZipFile(io.BytesIO(starter.content)).namelist()
        assert any(name.endswith(lab.entry) for name in names), (slug, names)
        correct = next(s for s in lab.solutions() if s.kind == "correct")
        jobs[slug] = submit(client, path, correct.files[lab.entry])
    for slug, job_id in jobs.items():
        status = wait_final(client, job_id, timeout=600)
        job = Job.objects.get(pk=job_id)
        assert (status["state"], status["score"]) == ("succeeded", 100.0), (slug, job.summary, job.result)
        if LABS[slug].is_gpu and not torch.cuda.is_available():
            assert "correct; unranked: no GPU worker" in job.summary and status["metric"] is None, slug
        else:
            assert status["metric"] is not None, slug

"""The cast and the shared set-up: a course with the custom_op lab, an instructor, a TA and
three students (alice, bob, carol). Data goes through services, as the app writes it."""

from __future__ import annotations

import os
import socket
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

import labs.catalog
from labs.catalog import LABS_ROOT
from portal.catalog.models import Lab
from portal.catalog.services import lab_sync_all
from portal.courses.services import assignment_create, enrollment_create
from tests.factories import CourseFactory, UserFactory

FIXTURE_LABS = Path(__file__).parent / "fixtures" / "labs"
# Uploaded labs go to a folder of the test run's own (and of every process the tests start),
# never to the repository's var/ where `make run` keeps the demo's.
UPLOADED_LABS = Path(tempfile.mkdtemp(prefix="aisys-test-uploaded-labs-"))
os.environ["AISYS_UPLOADED_LABS"] = str(UPLOADED_LABS)
labs.catalog.UPLOADED_LABS_ROOT = UPLOADED_LABS

# Without a GPU, Triton kernels run in Triton's interpreter (numpy on the CPU): correct results,
# meaningless timings. It must be set before any @triton.jit function is defined.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests need CUDA: skipped, and said so, on machines without a GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run on a GPU worker (see docs/security.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


PASSWORD = "pw-for-tests-1"


@pytest.fixture
def cast(db):
    course = CourseFactory(slug="aisys", title="AI Systems")
    people = {}
    for name, role in [
        ("ines", "instructor"),
        ("tariq", "ta"),
        ("alice", "student"),
        ("bob", "student"),
        ("carol", "student"),
    ]:
        people[name] = UserFactory(username=name)
        enrollment_create(course=course, user=people[name], role=role)
    people["outsider"] = UserFactory(username="outsider")
    people["course"] = course
    return people


@pytest.fixture
def custom_op(cast):
    lab_sync_all(root=LABS_ROOT)
    lab = Lab.objects.get(slug="custom_op")
    return assignment_create(
        course=cast["course"],
        lab=lab,
        opens_at=timezone.now() - timedelta(hours=1),
        due_at=timezone.now() + timedelta(days=7),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def uploaded_labs(tmp_path_factory, monkeypatch):
    """Each test publishes uploaded labs into a folder of its own."""
    root = tmp_path_factory.mktemp("uploaded-labs")
    monkeypatch.setattr(labs.catalog, "UPLOADED_LABS_ROOT", root)
    return root

"""Grading on this process, as a worker does, against the fixture labs in tests/fixtures/labs."""

from __future__ import annotations

import textwrap

import pytest

import labs.catalog
from gpu_runner.events import EventSink
from gpu_runner.grading import grade
from labs.protocol import JobMessage
from tests.conftest import FIXTURE_LABS


class ListSink(EventSink):
    def __init__(self):
        super().__init__()
        self.events: list[dict] = []

    def _deliver(self, event):
        self.events.append(event)


@pytest.fixture(autouse=True)
def fixture_labs(monkeypatch):
    monkeypatch.setattr(labs.catalog, "LABS_ROOT", FIXTURE_LABS)


def grade_source(
    source: str, *, lab: str = "echo_lab", version: int = 1, limits: dict | None = None, extra: dict | None = None
):
    """Grade ``source`` as the lab's entry file; returns the result and the published events."""
    message = JobMessage(
        job_id="t",
        lab_slug=lab,
        lab_version=version,
        files={"sol.py": textwrap.dedent(source), **(extra or {})},
        limits={
            "wall_seconds": 8,
            "output_bytes": 100_000,
            "cpu_seconds": 60,
            "memory_mb": 2048,
            "processes": 64,
            "file_size_mb": 64,
            **(limits or {}),
        },
        seed=1234,
    )
    sink = ListSink()
    result = grade(message, sink)
    return result, sink.events

"""One real grading worker (a Celery process on Redis, with the echo_lab fixture lab) for the
hostile-submission suite, and a helper that grades a submission on it and waits for the verdict.

Jobs are sent as the portal sends them (the ``gpu_runner.run_job`` task with a job message) and the
verdict is read from the job's Redis event stream, so nothing between the worker and its sandbox
is replaced. The worker's environment carries a canary secret that no submission may see.
"""

from __future__ import annotations

import json
import secrets
import textwrap
import time
from dataclasses import dataclass, field

import pytest
import redis
from celery import Celery
from django.conf import settings

from labs.protocol import JobMessage, Task
from portal.devstack import Stack
from tests.conftest import FIXTURE_LABS

CANARY = "canary-" + secrets.token_hex(12)
CORRECT = """
def double(x):
    return x * 2
"""
DEFAULT_LIMITS = {
    "wall_seconds": 8,
    "cpu_seconds": 60,
    "memory_mb": 2048,
    "processes": 64,
    "file_size_mb": 64,
    "disk_mb": 256,
    "output_bytes": 100_000,
}


@dataclass
class Graded:
    verdict: str
    reason: str
    score: float
    summary: str
    output_tail: str
    tests: dict[str, dict]
    log: str
    events: list[dict] = field(repr=False, default_factory=list)

    def messages(self) -> str:
        return "\n".join(t["message"] for t in self.tests.values())


class GradingWorker:
    def __init__(self, stack: Stack, queue: str):
        self.stack = stack
        self.queue = queue
        self.pid = stack.processes["worker-grading"].pid
        self.redis = redis.Redis.from_url(settings.REDIS_URL)
        self.broker = Celery("hostile-suite", broker=settings.REDIS_URL)
        self.jobs = 0

    def alive(self) -> bool:
        proc = self.stack.processes["worker-grading"]
        return proc.poll() is None and proc.pid == self.pid

    def grade(
        self,
        source: str,
        *,
        lab: str = "echo_lab",
        limits: dict | None = None,
        seed: int | None = None,
        timeout: float = 90,
    ) -> Graded:
        self.jobs += 1
        job_id = f"hostile{self.jobs}"
        stream = f"aisys:job:{job_id}:{secrets.token_hex(8)}:events"
        message = JobMessage(
            job_id=job_id,
            lab_slug=lab,
            lab_version=1,
            files={"sol.py": textwrap.dedent(source)},
            limits={**DEFAULT_LIMITS, **(limits or {})},
            seed=secrets.randbelow(2**62) if seed is None else seed,
            events_stream=stream,
            resource_class=self.queue,
            dispatched_at=time.time(),
        )
        self.broker.send_task(Task.RUN_JOB, args=[message.to_dict()], queue=self.queue)
        events, last = [], "0-0"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, entries in self.redis.xread({stream: last}, block=500) or []:
                for entry_id, fields in entries:
                    last = entry_id
                    events.append({"type": fields[b"type"].decode(), "data": json.loads(fields[b"data"])})
            if events and events[-1]["type"] == "result":
                result = events[-1]["data"]
                return Graded(
                    verdict=result["verdict"],
                    reason=result["reason"],
                    score=result["score"],
                    summary=result["summary"],
                    output_tail=result.get("output_tail", ""),
                    tests={e["data"]["name"]: e["data"] for e in events if e["type"] == "test"},
                    log="".join(e["data"]["text"] for e in events if e["type"] == "log"),
                    events=events,
                )
            assert self.alive(), f"the grading worker died; see {self.stack.log_dir}"
        raise AssertionError(f"no verdict for {job_id} after {timeout} s; events so far: {events[-5:]}")


@pytest.fixture(scope="session")
def grading_worker(tmp_path_factory):
    queue = f"hostile-{secrets.token_hex(4)}"
    stack = Stack(
        env={
            "REDIS_URL": settings.REDIS_URL,
            "LABS_DIR": str(FIXTURE_LABS),
            "SECRET_KEY": CANARY,
            "AISYS_CANARY": CANARY,
            "DATABASE_URL": f"postgres://aisys:{CANARY}@127.0.0.1:5432/aisys",
            "AISYS_PORTAL_QUEUE": f"{queue}-portal",  # the started notices go nowhere: no portal here
        },
        web_port=None,
        portal_worker=False,
        grading_queues=(queue,),
        grading_concurrency=1,
        log_dir=tmp_path_factory.mktemp("hostile-worker"),
    )
    with stack:
        yield GradingWorker(stack, queue)
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(queue, f"{queue}-portal")


@pytest.fixture
def worker(grading_worker):
    """The shared worker; after each hostile job it must still be the same process and grade a
    correct submission normally."""
    assert grading_worker.alive()
    yield grading_worker
    assert grading_worker.alive(), "the hostile submission took the worker down"
    after = grading_worker.grade(CORRECT)
    assert (after.verdict, after.score) == ("succeeded", 100.0), after.summary

"""What the portal and the grading workers say to each other, defined once, typed and versioned.

The portal never imports the worker and the worker never imports Django; both import this module
(plain Python: no Django, no torch). Each side builds messages with these classes and validates
what it receives with ``from_dict``: a malformed message is refused whole with a ``ProtocolError``
that says what is wrong, never half-processed. ``PROTOCOL`` is in every job message; a worker of
another version refuses the job instead of guessing.

Celery carries the messages (JSON); Redis Streams carry a job's events (``EventType``), read by the
portal's websocket consumer. docs/architecture.md describes the job lifecycle around them.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from labs.catalog import FILE_NAME_RE, SLUG_RE, Limits

PROTOCOL = 2
MAX_FILES = 16
MAX_TEXT = 100_000  # a result's summary, detail or output tail, after the worker has cut them
MAX_TESTS = 500
STREAM_RE = re.compile(r"^[\w:.-]{1,200}$")


class ProtocolError(ValueError):
    """A message does not follow this protocol; the text names the field and what was wrong."""


class Task:
    """Celery task names: the portal sends the worker's by name and never imports them.

    Plain strings, not an enum: Celery takes an object's ``name`` attribute as the task's name,
    and an enum member's ``name`` is its Python name (``RECORD_JOB_RESULT``), not its value.
    """

    RUN_JOB = "gpu_runner.run_job"  # JobMessage in, JobResult out (linked to RECORD_JOB_RESULT)
    SELF_CHECK_LAB = "gpu_runner.self_check_lab"  # SelfCheckMessage in, SelfCheckReport out
    RECORD_JOB_STARTED = "portal.record_job_started"
    RECORD_JOB_RESULT = "portal.record_job_result"
    RECORD_LAB_SELF_CHECK = "portal.record_lab_self_check"
    JOBS_SWEEP = "portal.jobs_sweep"


class EventType(StrEnum):
    """A job's events, in its Redis Stream, each with ``seq``, ``type``, ``ts`` and ``data``."""

    STATUS = "status"  # {state, detail}
    LOG = "log"  # {stream: "output" | "runner", text, inputs: bool (output printed once inputs were given)}
    TEST = "test"  # TestResult
    PROGRESS = "progress"  # {phase, done, total}
    RESULT = "result"  # {verdict, reason, score, metric, summary, output_tail}: the last event


class Verdict(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the submission's fault
    ERROR = "error"  # the infrastructure's fault: retried, not charged
    TIMED_OUT = "timed_out"


def _need(data: dict, key: str, kinds: type | tuple[type, ...], where: str):
    value = data.get(key)
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ProtocolError(f"{where}: '{key}' must be {_names(kinds)}, got a bool")
    if not isinstance(value, kinds):
        raise ProtocolError(f"{where}: '{key}' must be {_names(kinds)}, got {type(value).__name__}")
    return value


def _names(kinds) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(k.__name__ for k in kinds)


def _text(data: dict, key: str, where: str, *, limit: int = MAX_TEXT, default: str | None = None) -> str:
    if default is not None and key not in data:
        return default
    value = _need(data, key, str, where)
    if len(value) > limit:
        raise ProtocolError(f"{where}: '{key}' is {len(value)} characters, over {limit}")
    return value


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"{where} must be a finite number")
    return float(value)


# ------------------------------------------------------------------------------------------------
# a job: portal -> worker
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobMessage:
    """Everything a worker needs to grade one job; it never reads the database."""

    job_id: int | str
    lab_slug: str
    lab_version: int
    files: dict[str, str]
    limits: dict[str, float]
    seed: int
    owner: str = ""  # whose earlier builds the compile cache may reuse
    events_stream: str = ""
    resource_class: str = "cpu"
    dispatched_at: float | None = None

    def to_dict(self) -> dict:
        return {
            "protocol": PROTOCOL,
            "job_id": self.job_id,
            "lab": {"slug": self.lab_slug, "version": self.lab_version},
            "files": dict(self.files),
            "limits": dict(self.limits),
            "seed": self.seed,
            "owner": self.owner,
            "events_stream": self.events_stream,
            "resource_class": self.resource_class,
            "dispatched_at": self.dispatched_at,
        }

    @classmethod
    def from_dict(cls, data: Any) -> JobMessage:
        where = "job message"
        if not isinstance(data, dict):
            raise ProtocolError(f"a {where} must be a JSON object, got {type(data).__name__}")
        version = data.get("protocol")
        if version != PROTOCOL:
            raise ProtocolError(
                f"the {where} is protocol {version!r} and this worker speaks protocol {PROTOCOL}; "
                "deploy the same version to the portal and the workers"
            )
        job_id = _need(data, "job_id", (int, str), where)
        if isinstance(job_id, str) and not 0 < len(job_id) <= 64:
            raise ProtocolError(f"{where}: 'job_id' must be 1 to 64 characters")
        lab = _need(data, "lab", dict, where)
        slug = _need(lab, "slug", str, f"{where}'s lab")
        if not SLUG_RE.match(slug):
            raise ProtocolError(f"{where}: lab slug {slug[:60]!r} is not a lab slug")
        version = _need(lab, "version", int, f"{where}'s lab")
        files = _need(data, "files", dict, where)
        if not 0 < len(files) <= MAX_FILES:
            raise ProtocolError(f"{where}: 'files' must hold 1 to {MAX_FILES} files")
        for name, text in files.items():
            if not isinstance(name, str) or not FILE_NAME_RE.match(name) or not isinstance(text, str):
                raise ProtocolError(f"{where}: file {str(name)[:60]!r} must be a module name with text")
        limits = _need(data, "limits", dict, where)
        known = set(Limits().as_dict())
        for key, value in limits.items():
            if key not in known:
                raise ProtocolError(f"{where}: unknown limit {str(key)[:60]!r} (known: {', '.join(sorted(known))})")
            if _number(value, f"{where}: limit '{key}'") <= 0:
                raise ProtocolError(f"{where}: limit '{key}' must be positive")
        seed = _need(data, "seed", int, where)
        stream = _text(data, "events_stream", where, limit=200, default="")
        if stream and not STREAM_RE.match(stream):
            raise ProtocolError(f"{where}: 'events_stream' is not a stream key")
        dispatched_at = data.get("dispatched_at")
        return cls(
            job_id=job_id,
            lab_slug=slug,
            lab_version=version,
            files=dict(files),
            limits=dict(limits),
            seed=seed,
            owner=_text(data, "owner", where, limit=200, default=""),
            events_stream=stream,
            resource_class=_text(data, "resource_class", where, limit=40, default="cpu"),
            dispatched_at=None if dispatched_at is None else _number(dispatched_at, f"{where}: 'dispatched_at'"),
        )


# ------------------------------------------------------------------------------------------------
# its result: worker -> portal
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestResult:
    name: str
    points: float
    outcome: str  # passed | failed | not_run
    message: str = ""
    duration: float = 0.0

    @classmethod
    def from_dict(cls, data: Any) -> TestResult:
        if not isinstance(data, dict):
            raise ProtocolError("a test result must be an object")
        outcome = _text(data, "outcome", "a test result", limit=20)
        if outcome not in ("passed", "failed", "not_run"):
            raise ProtocolError(f"a test result's outcome {outcome!r} is not passed, failed or not_run")
        return cls(
            name=_text(data, "name", "a test result", limit=200),
            points=_number(data.get("points"), "a test result's points"),
            outcome=outcome,
            message=_text(data, "message", "a test result", limit=MAX_TEXT, default=""),
            duration=_number(data.get("duration", 0.0), "a test result's duration"),
        )


@dataclass(frozen=True)
class JobResult:
    job_id: int | str
    verdict: Verdict
    reason: str
    score: float
    metric: float | None
    summary: str
    tests: list[TestResult] = field(default_factory=list)
    output_tail: str = ""
    worker: str = ""
    lab_version: int | None = None
    timings: dict = field(default_factory=dict)
    ranked: bool = False
    unranked: str = ""  # why a correct result has no rank (a GPU lab graded without a GPU)
    detail: str = ""  # an infrastructure error's traceback, for operators

    def to_dict(self) -> dict:
        data = asdict(self)
        data["verdict"] = str(self.verdict)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> JobResult:
        where = "job result"
        if not isinstance(data, dict):
            raise ProtocolError(f"a {where} must be a JSON object, got {type(data).__name__}")
        verdict = data.get("verdict")
        if verdict not in tuple(Verdict):
            raise ProtocolError(f"{where}: verdict {str(verdict)[:40]!r} is not one of {', '.join(Verdict)}")
        score = _number(data.get("score"), f"{where}: 'score'")
        if not 0.0 <= score <= 100.0:
            raise ProtocolError(f"{where}: score {score} is not within 0 to 100")
        metric = data.get("metric")
        tests = data.get("tests", [])
        if not isinstance(tests, list) or len(tests) > MAX_TESTS:
            raise ProtocolError(f"{where}: 'tests' must be a list of at most {MAX_TESTS}")
        timings = data.get("timings", {})
        if not isinstance(timings, dict):
            raise ProtocolError(f"{where}: 'timings' must be an object")
        lab_version = data.get("lab_version")
        return cls(
            job_id=_need(data, "job_id", (int, str), where),
            verdict=Verdict(verdict),
            reason=_text(data, "reason", where, limit=40, default=""),
            score=score,
            metric=None if metric is None else _number(metric, f"{where}: 'metric'"),
            summary=_text(data, "summary", where),
            tests=[TestResult.from_dict(t) for t in tests],
            output_tail=_text(data, "output_tail", where, default=""),
            worker=_text(data, "worker", where, limit=200, default=""),
            lab_version=lab_version if isinstance(lab_version, int) and not isinstance(lab_version, bool) else None,
            timings=dict(timings),
            ranked=bool(data.get("ranked", False)),
            unranked=_text(data, "unranked", where, limit=200, default=""),
            detail=_text(data, "detail", where, default=""),
        )


# ------------------------------------------------------------------------------------------------
# an uploaded lab's self-check: portal -> worker -> portal
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelfCheckMessage:
    """An uploaded lab, for a worker to grade its starter and every shipped solution."""

    upload_id: int
    slug: str
    archive: str  # the zip, base64

    def to_dict(self) -> dict:
        return {"protocol": PROTOCOL, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Any) -> SelfCheckMessage:
        where = "self-check message"
        if not isinstance(data, dict) or data.get("protocol") != PROTOCOL:
            raise ProtocolError(f"the {where} is not protocol {PROTOCOL}; deploy the same version everywhere")
        return cls(
            upload_id=_need(data, "upload_id", int, where),
            slug=_text(data, "slug", where, limit=60),
            archive=_text(data, "archive", where, limit=64 << 20),
        )


@dataclass(frozen=True)
class SelfCheckReport:
    ok: bool
    problems: list[str]
    solutions: list[dict]  # one per solution: expected and actual outcome (gpu_runner.selfcheck)
    worker: str
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> SelfCheckReport:
        where = "self-check report"
        if not isinstance(data, dict):
            raise ProtocolError(f"a {where} must be a JSON object")
        problems, solutions = data.get("problems", []), data.get("solutions", [])
        if not isinstance(problems, list) or not all(isinstance(p, str) for p in problems):
            raise ProtocolError(f"{where}: 'problems' must be a list of strings")
        if not isinstance(solutions, list) or not all(isinstance(s, dict) for s in solutions):
            raise ProtocolError(f"{where}: 'solutions' must be a list of objects")
        return cls(
            ok=_need(data, "ok", bool, where),
            problems=problems,
            solutions=solutions,
            worker=_text(data, "worker", where, limit=200, default=""),
            seconds=_number(data.get("seconds", 0.0), f"{where}: 'seconds'"),
        )

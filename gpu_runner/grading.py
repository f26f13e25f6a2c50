"""Grade one job: prepare -> start -> collect -> report -> clean up (the job folder, the stream's expiry).

Trusted code, run by the worker outside the sandbox. It generates the cases from the job's
secret seed, starts the harness with the student's files, hands it the inputs once the
student's module is imported, checks each output as it arrives and decides the verdict.
Whatever the submission does, this returns a result; an exception here is the worker's fault
and becomes verdict ``error``.
"""

from __future__ import annotations

import errno
import inspect
import io
import math
import re
import socket
import time
import traceback
from dataclasses import dataclass, field

import torch

from gpu_runner import compile_cache, launcher, rankgroup, sandbox, timing
from gpu_runner.events import EventSink
from gpu_runner.jobfolder import JobFolder
from gpu_runner.jobsetup import (
    MAX_COMPILER_CHARS,
    MAX_MESSAGE_CHARS,
    describe_error,
    harness_command,
    job_environment,
    new_job_folder,
    read_record,
)
from gpu_runner.text import bounded
from kernels import devices
from labs.catalog import LabError, LabFolder, find_lab
from labs.protocol import EventType, JobMessage, JobResult, TestResult, Verdict
from labs.trusted import CheckFailed

# A source file at the end of a path in a compiler message: "/job/.torch_extensions/ext/main.cpp:5:3"
# is shown as "main.cpp:5:3". Matched per whitespace-free token, so the work is linear in the text.
SOURCE_NAME = re.compile(r"[\w.-]+\.(?:cpp|cu|h|cuh)(?=[:\s]|$)")
TOKEN = re.compile(r"\S+")
MAX_SUMMARY_CHARS = 8000
MAX_LABEL_CHARS = 64  # a timed batch's label
MAX_BATCHES_PER_CASE = 16
DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
RESULT_TAIL_CHARS = 2000
UNRANKED_NO_GPU = "no GPU worker"  # why a correct GPU-lab result carries no metric


@dataclass
class TestOutcome:
    name: str
    points: float
    outcome: str = "not_run"  # passed | failed | not_run
    message: str = ""
    duration: float = 0.0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("name", "points", "outcome", "message", "duration")}

    def settle(self, outcome: str, message: str) -> None:
        self.outcome, self.message = outcome, bounded(message, MAX_MESSAGE_CHARS)


@dataclass
class Grading:
    """What one job learns while it runs; ``report`` turns it into the result message."""

    job_id: int | str
    lab: LabFolder
    sink: EventSink
    files: dict[str, str]  # the submission
    cases: list[dict]
    tests: list[TestOutcome]
    folder: JobFolder
    grader: object
    limits: dict
    config: sandbox.Config
    device: str = "cpu"  # where the job's kernels run: "cuda" on a GPU worker, else "cpu"
    owner: str = ""  # the student, whose own later jobs alone may reuse builds this job made
    build_key: str | None = None  # the compile cache key of the submission's extension sources
    build_cache: str | None = None  # "hit" or "miss" when the submission builds an extension
    metric: float | None = None
    import_error: dict | None = None
    case_errors: list[dict] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    current_case: int | None = None
    # case index -> shape label -> {"begin": t, "end": t} on the worker's monotonic clock
    batches: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    meters: dict[int, dict[str, int]] = field(default_factory=dict)  # case index -> name -> count
    rank_group: rankgroup.Group | None = None  # the distributed cases' processes, kept for the timing phase

    @property
    def interpreted(self) -> bool:
        """Triton kernels of a GPU lab on a worker without CUDA run in the interpreter."""
        return self.lab.is_gpu and self.device != "cuda"


def grade(message: JobMessage, sink: EventSink, *, lab: LabFolder | None = None) -> dict:
    """Grade the job described by ``message`` (see docs/architecture.md) and return its result.

    ``lab`` grades against a lab folder loaded by the caller (a lab being checked before it is
    published) instead of the catalog's lab named in the message.
    """
    try:
        return _grade(message, sink, lab)
    finally:
        sink.close()


def _grade(message: JobMessage, sink: EventSink, lab: LabFolder | None) -> dict:
    marks = {"received": time.time()}
    sink.publish(EventType.STATUS, {"state": "running", "detail": f"on {socket.gethostname()}"})
    try:
        grading = prepare(message, sink, lab=lab)
    except LabError as exc:
        return _infrastructure_error(message, sink, marks, f"the lab could not be loaded: {exc}")
    except sandbox.SandboxUnavailable as exc:
        return _infrastructure_error(message, sink, marks, f"this worker cannot sandbox submissions: {exc}")
    except Exception:  # noqa: BLE001 - a grader bug is the infrastructure's fault, not the student's
        return _infrastructure_error(message, sink, marks, "preparing the job failed:\n" + traceback.format_exc())
    grading.marks = marks
    try:
        outcome = start(grading) if _has_plain_cases(grading) else _no_plain_process(grading)
        if grading.build_key and grading.build_cache == "miss":
            compile_cache.save(grading.folder, grading.build_key, owner=grading.owner)
        if _finished(grading, outcome):
            rankgroup.run_rank_cases(
                grading, check=lambda index, runtime, output: _check(grading, index, runtime, output)
            )
            timing.run_timed_cases(
                grading, check=lambda index, runtime, output: _check(grading, index, runtime, output)
            )
        return report(grading, outcome, message)
    except Exception:  # noqa: BLE001
        return _infrastructure_error(message, sink, marks, "grading failed:\n" + traceback.format_exc())
    finally:
        if grading.rank_group is not None:
            grading.rank_group.stop()
        grading.folder.remove()


def prepare(message: JobMessage, sink: EventSink, *, lab: LabFolder | None = None) -> Grading:
    lab = lab or find_lab(message.lab_slug)
    if lab.version != message.lab_version:
        raise LabError(
            f"this worker has {lab.slug} version {lab.version} but the job needs version "
            f"{message.lab_version}; deploy the same labs/ to the portal and the workers"
        )
    grader = lab.load_grader()
    device = "cuda" if lab.is_gpu and torch.cuda.is_available() else "cpu"
    if "device" in inspect.signature(grader.cases).parameters:
        cases = grader.cases(message.seed, device=device)  # benchmark shapes differ by device
    else:
        cases = grader.cases(message.seed)
    unknown = sorted(set(message.files) - set(lab.allowed_files))
    if unknown:
        raise LabError(f"files {unknown} are not allowed by the lab (allowed: {list(lab.allowed_files)})")
    config = sandbox.config()
    limits = {**lab.limits.as_dict(), **message.limits}
    folder = new_job_folder(message.job_id, lab=lab, config=config, limits=limits)
    for name, text in message.files.items():
        folder.write_box_file(name, text.encode("utf-8"))
    owner = message.owner
    build_key = compile_cache.source_key(message.files, owner=owner, device=device) if lab.builds_extensions else None
    build_cache = None
    if build_key:
        build_cache = "hit" if compile_cache.restore(folder, build_key) else "miss"
        detail = "reusing the build of these sources" if build_cache == "hit" else "compiling (cached afterwards)"
        sink.publish(EventType.LOG, {"stream": "runner", "text": f"C++/CUDA extension: {detail}\n"})
    tests = [TestOutcome(name=c["name"], points=float(c.get("points", 1.0))) for c in cases]
    sink.publish(EventType.PROGRESS, {"phase": "tests", "done": 0, "total": len(cases)})
    return Grading(
        files=dict(message.files),
        owner=owner,
        build_key=build_key,
        build_cache=build_cache,
        job_id=message.job_id,
        lab=lab,
        sink=sink,
        cases=cases,
        tests=tests,
        folder=folder,
        grader=grader,
        limits=limits,
        config=config,
        device=device,
    )


def _has_plain_cases(grading: Grading) -> bool:
    """Whether any case runs in the job's one process; if none does (every case is distributed or
    timed), that process would only import the submission, which each rank does anyway."""
    return any("timed" not in c and "world_size" not in c for c in grading.cases) or not any(
        "world_size" in c for c in grading.cases
    )


def _no_plain_process(grading: Grading) -> launcher.ProcessOutcome:
    """The outcome of the process a lab of distributed cases does not need: the first group of ranks
    reports an import error (``rankgroup.run_rank_cases``)."""
    now = time.time()
    grading.marks.update(launched=now, harness_started=now)
    return launcher.ProcessOutcome(
        returncode=0,
        signal_name="",
        timed_out=False,
        output_limited=False,
        output_bytes=0,
        output_tail="",
        wall_seconds=0.0,
    )


def start(grading: Grading) -> launcher.ProcessOutcome:
    folder = grading.folder
    gpus = sandbox.assigned_gpus() if grading.device == "cuda" else ()
    command = harness_command(
        grading.config, folder, mode="cases", entry=grading.lab.entry, forbidden=grading.lab.forbidden
    )
    grading.marks["launched"] = time.time()
    return launcher.launch(
        command,
        sandbox=sandbox.Sandbox(grading.config, folder, grading.limits, gpus),
        env=job_environment(folder, device=grading.device, interpreted=grading.interpreted),
        # ``inputs``: printed once the cases' inputs were in the sandbox, so it may show them; the
        # portal withholds such output from a student while any test of theirs is hidden
        on_output=lambda text: grading.sink.publish(
            EventType.LOG, {"stream": "output", "text": text, "inputs": "imported" in grading.marks}
        ),
        on_event=lambda event: collect(grading, event),
    )


def collect(grading: Grading, event: dict) -> bytes | None:
    """Handle one event from the harness; checks each case's output as soon as it is written."""
    kind = event["type"]
    if kind == "started":
        grading.marks.setdefault("harness_started", time.time())
    elif kind == "imported" and "imported" not in grading.marks:
        # Only now, with the student's module imported, do the inputs enter the sandbox, under a
        # name the submission cannot have prepared a link for.
        payload = {
            "cases": [
                {"index": i, "name": c["name"], "inputs": c["inputs"]}
                for i, c in enumerate(grading.cases)
                # timed cases run later, in the timing phase (gpu_runner/timing.py); distributed
                # cases on their ranks' sandboxes (gpu_runner/rankgroup.py)
                if "timed" not in c and "world_size" not in c
            ]
        }
        name = grading.folder.write_box_file("_cases.pt", _serialize(payload), unique=True)
        grading.marks["imported"] = time.time()
        return f"go {name}\n".encode()
    elif kind == "import_failed":
        grading.import_error = read_record(grading.folder, "import").get("error")
    elif kind == "case_start" and isinstance(event.get("index"), int):
        grading.current_case = event["index"]
    elif kind == "bench_begin" and grading.current_case is not None:
        # The sandbox starts timing only after this answer, so this clock reading precedes every
        # timed call of the batch; a later begin for the same label replaces it (forging one
        # can only shorten the envelope).
        if any(t.outcome == "failed" for t in grading.tests):
            return b"skip\n"  # correctness first: a wrong kernel's speed is worth nothing
        batch = grading.batches.setdefault(grading.current_case, {})
        label = str(event.get("label"))[:MAX_LABEL_CHARS]
        if label not in batch and len(batch) >= MAX_BATCHES_PER_CASE:
            return b"skip\n"
        batch[label] = {"begin": time.monotonic()}
        return b"begin\n"
    elif kind == "bench_end" and grading.current_case is not None:
        entry = grading.batches.get(grading.current_case, {}).get(str(event.get("label"))[:MAX_LABEL_CHARS])
        if entry is not None and "end" not in entry:
            entry["end"] = time.monotonic()
    elif kind == "meter" and grading.current_case is not None:
        return _meter(grading, event)
    elif kind in ("bench_begin", "meter"):
        return rankgroup.outside_case(event)
    elif kind == "case_done" and isinstance(event.get("index"), int) and 0 <= event["index"] < len(grading.cases):
        _check_case(grading, event["index"], float(event.get("duration", 0.0)))
    return None


def _meter(grading: Grading, event: dict) -> bytes:
    """Count on the worker's side what a case's ``harness.meter`` reports (docs/security.md,
    invariant 4): a counter in the sandbox could be reset, this one only grows."""
    meters = grading.meters.setdefault(grading.current_case, {})
    name, amount = str(event.get("name"))[:MAX_LABEL_CHARS], event.get("amount")
    if name not in meters and len(meters) >= MAX_BATCHES_PER_CASE:
        return b"count -1\n"
    if isinstance(amount, int) and not isinstance(amount, bool) and 0 <= amount <= 1 << 40:
        meters[name] = meters.get(name, 0) + amount
    return f"count {meters.get(name, 0)}\n".encode()


def _runtime(grading: Grading, index: int) -> dict:
    """What the trusted check of a benchmark case needs to know about how it ran."""
    batches = grading.batches.get(index, {})
    if grading.device == "cuda":
        spec = devices.current(f"cuda:{sandbox.assigned_gpus()[0]}")
    else:
        spec = devices.current("cpu")
    return {
        "device": grading.device,
        "spec": spec,  # the device's peaks, for the physical floor (kernels.devices)
        "interpreted": grading.interpreted,
        "envelopes": {label: t["end"] - t["begin"] for label, t in batches.items() if "end" in t},
        "meters": dict(grading.meters.get(index, {})),
    }


def _serialize(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _check_case(grading: Grading, index: int, duration: float) -> None:
    test = grading.tests[index]
    if test.outcome != "not_run" or "timed" in grading.cases[index] or "world_size" in grading.cases[index]:
        return  # each case is checked once, however often the channel repeats itself
    test.duration = round(duration, 4) if isinstance(duration, float) and 0 <= duration < 1e6 else 0.0
    record = read_record(grading.folder, index)
    if not record.get("ok"):
        error = record["error"]
        grading.case_errors.append(error)
        test.settle("failed", describe_error(error))
        publish_test(grading, test)
        return
    needs_runtime = "benchmark" in grading.cases[index] or index in grading.batches or index in grading.meters
    runtime = _runtime(grading, index) if needs_runtime else None
    _check(grading, index, runtime, record.get("value"))


def _check(grading: Grading, index: int, runtime: dict | None, output) -> None:
    """The grader's ``check`` of case ``index`` on ``output`` (what the student's process returned),
    with ``runtime`` (what the worker measured) in ``case["runtime"]``."""
    test = grading.tests[index]
    case = grading.cases[index] if runtime is None else {**grading.cases[index], "runtime": runtime}
    try:
        verdict = grading.grader.check(case, output)
        message = verdict.get("message") if isinstance(verdict, dict) else None
        test.settle("passed", message if isinstance(message, str) else "")
        if isinstance(verdict, dict) and isinstance(verdict.get("metric"), (int, float)):
            grading.metric = float(verdict["metric"])
    except CheckFailed as exc:
        test.settle("failed", str(exc))
    except Exception as exc:  # noqa: BLE001 - malformed output tripping the checker
        test.settle("failed", f"the output could not be checked: {type(exc).__name__}: {bounded(exc, 500)}")
    publish_test(grading, test)


def publish_test(grading: Grading, test: TestOutcome) -> None:
    grading.sink.publish(EventType.TEST, test.as_dict())
    done = sum(t.outcome != "not_run" for t in grading.tests)
    grading.sink.publish(EventType.PROGRESS, {"phase": "tests", "done": done, "total": len(grading.tests)})


def _finished(grading: Grading, outcome: launcher.ProcessOutcome) -> bool:
    """The test job ran every untimed case to the end, within its limits."""
    untimed = [
        t for t, c in zip(grading.tests, grading.cases, strict=True) if "timed" not in c and "world_size" not in c
    ]
    return (
        all(t.outcome != "not_run" for t in untimed)
        and not (outcome.timed_out or outcome.output_limited or outcome.memory_limited or outcome.processes_limited)
        and grading.import_error is None
    )


def report(grading: Grading, outcome: launcher.ProcessOutcome, message: JobMessage) -> dict:
    verdict, reason, summary = _verdict(grading, outcome)
    summary = bounded(summary, MAX_SUMMARY_CHARS)
    tests = grading.tests
    for test in tests:
        if test.outcome == "not_run":
            test.settle("failed", f"not run: the job stopped first ({reason.replace('_', ' ')})")
            grading.sink.publish(EventType.TEST, test.as_dict())
    total = sum(t.points for t in tests)
    score = round(100.0 * sum(t.points for t in tests if t.outcome == "passed") / total, 2) if total else 0.0
    timings = _timings(grading.marks, message, time.time())
    if grading.build_cache:
        timings["build_cache"] = grading.build_cache
    ranked = verdict == Verdict.SUCCEEDED and _finite(grading.metric)
    result = JobResult(
        job_id=message.job_id,
        verdict=Verdict(verdict),
        reason=reason,
        score=score,
        metric=grading.metric if ranked else None,
        summary=summary,
        tests=[TestResult(**t.as_dict()) for t in tests],
        output_tail=outcome.output_tail,
        worker=socket.gethostname(),
        lab_version=grading.lab.version,
        timings=timings,
        ranked=ranked,
        unranked=UNRANKED_NO_GPU if verdict == Verdict.SUCCEEDED and grading.interpreted else "",
    )
    succeeded = result.verdict == Verdict.SUCCEEDED
    _publish_result(grading.sink, result, tail="" if succeeded else result.output_tail[-RESULT_TAIL_CHARS:])
    return result.to_dict()


def _publish_result(sink: EventSink, result: JobResult, *, tail: str) -> None:
    """The job's last event: what the student's page shows when the job ends."""
    shown = {k: getattr(result, k) for k in ("reason", "score", "metric", "summary")}
    sink.publish(EventType.RESULT, {"verdict": str(result.verdict), **shown, "output_tail": tail})


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _verdict(grading: Grading, outcome: launcher.ProcessOutcome) -> tuple[str, str, str]:
    """The verdict, its reason and a summary that tells the student what to change."""
    tests, limits = grading.tests, grading.limits
    running = next((t.name for t in tests if t.outcome == "not_run"), None)
    during = f" during test '{running}'" if running else ""
    errors = grading.case_errors + ([grading.import_error] if grading.import_error else [])
    if "harness_started" not in grading.marks and not (outcome.memory_limited or outcome.timed_out):
        # The harness announces itself before it imports anything of the submission's.
        raise RuntimeError(
            f"the sandboxed harness never started (exit {outcome.returncode}): {outcome.output_tail.strip()[-800:]}"
        )
    # Before memory: a fork bomb runs out of memory too, but the processes are what to fix.
    if outcome.processes_limited and (running or any(t.outcome == "failed" for t in tests)):
        return (
            "failed",
            "process_limit",
            f"Process limit exceeded: your code tried to run more than {limits['processes']} processes or "
            f"threads at once{during}.",
        )
    if outcome.memory_limited or any(e.get("type") == "MemoryError" for e in errors):
        peak = f" (peak {outcome.peak_memory_bytes / 2**20:.0f} MiB)" if outcome.peak_memory_bytes else ""
        return (
            "failed",
            "memory_limit",
            f"Memory limit exceeded: your code needed more than {limits['memory_mb']} MiB{peak}{during}; "
            "allocate less (smaller batches, free what you no longer need).",
        )
    if grading.import_error is not None:
        compiler = compiler_errors(grading.import_error.get("message", ""))
        if compiler:
            return "failed", "compile_error", f"Your C++/CUDA code did not compile:\n{compiler}"
        return "failed", "import_error", f"Your module could not be imported: {describe_error(grading.import_error)}"
    if outcome.timed_out:
        return (
            "timed_out",
            "time_limit",
            f"Time limit exceeded: the job ran for more than {limits['wall_seconds']:g} s{during}.",
        )
    if outcome.output_limited:
        return (
            "failed",
            "output_limit",
            f"Output limit exceeded: your code printed more than {limits['output_bytes']} bytes{during}; print less.",
        )
    if outcome.signal_name == "SIGXCPU":
        return "failed", "cpu_limit", f"CPU time limit of {limits['cpu_seconds']:g} s exceeded{during}."
    finished = running is None
    failed = [t for t in tests if t.outcome == "failed"]
    if finished and not failed and grading.lab.is_gpu and grading.device != "cuda":
        return (
            "succeeded",
            "",
            f"All {len(tests)} tests passed: correct; unranked: {UNRANKED_NO_GPU} (the kernels ran in Triton's "
            "interpreter or on the CPU, where timings mean nothing).",
        )
    if not finished:
        how = f"exited with code {outcome.returncode}"
        if outcome.signal_name:
            how = f"was killed by {outcome.signal_name}"
        return "failed", "crashed", f"Your code crashed: the process {how}{during}."
    if any(e.get("errno") in DISK_ERRNOS for e in errors):
        return (
            "failed",
            "disk_limit",
            f"Disk limit exceeded: files are limited to {limits['file_size_mb']} MiB each and "
            f"{limits['disk_mb']} MiB in all; write less.",
        )
    if failed:
        forbidden = any(e.get("forbidden") for e in errors)
        names = ", ".join(t.name for t in failed)
        reason = "forbidden_call" if forbidden else "wrong_answer"
        return "failed", reason, f"{len(failed)} of {len(tests)} tests failed: {names}"
    return "succeeded", "", f"All {len(tests)} tests passed."


def compiler_errors(message: str, *, max_lines: int = 40) -> str:
    """The compiler's complaint from torch's "Error building extension" message, or "".

    Build paths are cut down to file names, and the compiler command lines (long, and the
    student's to ignore) are dropped; what is left are the error lines with their context. The
    message comes from the job: it is cut to ``MAX_COMPILER_CHARS`` and each line to 400
    characters first, and parsed one token at a time, in time linear in its length.
    """
    if "Error building extension" not in message:
        return ""
    kept = []
    for line in bounded(message, MAX_COMPILER_CHARS).splitlines():
        line = line[:400]
        if line.startswith(("[", "FAILED:", "ninja:")) or " -c " in line or line.strip().startswith(("c++ ", "nvcc ")):
            continue
        line = TOKEN.sub(_source_name, line).rstrip()
        if line.strip() and not line.startswith("Error building extension"):
            kept.append(line)
    if not kept:
        return message.splitlines()[0][:400]
    return "\n".join(kept[:max_lines]) + ("\n[...]" if len(kept) > max_lines else "")


def _source_name(token: re.Match) -> str:
    """``'/job/.torch_extensions/ext/main.cpp:5:3:'`` -> ``'main.cpp:5:3:'``; other tokens unchanged."""
    text = token.group(0)
    start = text.find("/")
    if start < 0:
        return text
    name = text.rpartition("/")[2]
    return text[:start] + name if SOURCE_NAME.match(name) else text


def _timings(marks: dict, message: JobMessage, finished_at: float) -> dict:
    launched = marks.get("launched", finished_at)
    ready = marks.get("harness_started", launched)
    timings = {
        "finished_at": finished_at,
        "process_start": round(ready - launched, 4),
        "grading": round(finished_at - ready, 4),
        "worker_total": round(finished_at - marks["received"], 4),
    }
    if message.dispatched_at:
        timings["queue_wait"] = round(marks["received"] - message.dispatched_at, 4)
    return timings


def _infrastructure_error(message: JobMessage, sink: EventSink, marks: dict, detail: str) -> dict:
    summary = "The grader failed (not your fault); the job will be retried. " + detail.strip().splitlines()[-1]
    result = JobResult(
        job_id=message.job_id,
        verdict=Verdict.ERROR,
        reason="infrastructure",
        score=0.0,
        metric=None,
        summary=bounded(summary, MAX_SUMMARY_CHARS),
        detail=detail[-4000:],
        worker=socket.gethostname(),
        lab_version=message.lab_version,
        timings=_timings(marks, message, time.time()),
    )
    _publish_result(sink, result, tail="")
    return result.to_dict()

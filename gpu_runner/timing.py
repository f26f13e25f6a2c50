"""The timing phase: a lab's timed cases, timed call by call on the worker's own clock.

A figure that ranks must not be measured where the student's code runs (docs/security.md,
invariant 1), and the inputs of a timed call must not be known before the call starts
(invariant 2). So, once every correctness test has passed, the worker starts two fresh sandboxes:

- the *student's* process, with the submission imported and the lab's forbidden calls patched;
- the *reference* process, with the lab's ``reference.py`` imported instead: a clean process in
  which no student code ever ran (only when the timed case asks for a reference).

Both run the harness in ``timed`` mode and wait for calls. For each call the worker draws a fresh
secret seed, asks the grader for that call's inputs (``grader.call_inputs``), writes them into the
runner folder under a random name the job can open but not list, and times the call from writing
``call`` on the process's stdin to reading ``called`` on its event channel. Calls alternate
(student, reference; reference, student; ...) after a few warm-up calls, and while the reference
runs the student's process is frozen (its cgroup's freezer), so nothing it left running can slow
the reference down. Each ``called`` carries the fingerprint of the call's outputs (their dot
products with probes the worker drew), computed inside the timed region; the grader's ``check``
compares every call's fingerprint with its own computation and turns the worker's times into the
metric.

Trusted code, in the worker.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gpu_runner import launcher, sandbox
from gpu_runner.jobfolder import JobFolder
from gpu_runner.jobsetup import describe_error, harness_command, job_environment, new_job_folder, read_record
from gpu_runner.text import LineMarker, bounded
from labs.protocol import EventType

CALLS_DIR = "calls"  # in the runner folder: written by the worker, opened by name in the sandbox
HEADER_LIMIT = 1 << 20
NOT_TIMED = "not timed: every correctness test must pass before the benchmark runs"


class TimingAborted(Exception):
    """The student's process failed during the timing phase; the message is for the student."""


@dataclass
class Timed:
    """One timed case as the worker saw it: what ``check`` gets in ``case["runtime"]["timing"]``."""

    seconds: list[float] = field(default_factory=list)  # the student's calls, on the worker's clock
    reference_seconds: list[float] | None = None  # the reference's, interleaved with them
    inputs: list[dict] = field(default_factory=list)  # every timed call's inputs
    probes: dict[str, torch.Tensor] = field(default_factory=dict)
    frozen: bool = False  # whether the student's process was frozen while the reference ran

    def as_runtime(self) -> dict:
        return {
            "seconds": self.seconds,
            "reference_seconds": self.reference_seconds,
            "inputs": self.inputs,
            "probes": self.probes,
            "frozen": self.frozen,
        }


@dataclass
class _Process:
    """One timing-phase sandbox and the events it has sent."""

    role: str  # "student" or "reference"
    process: launcher.JobProcess
    folder: JobFolder
    box: sandbox.Sandbox
    job_wall_seconds: float
    events: list[tuple[float, dict]] = field(default_factory=list)  # (worker clock, event)

    def wait_for(self, *types: str, number: int | None = None) -> tuple[float, dict]:
        """The next event of one of ``types`` (for call ``number``), pumping the pipes meanwhile."""
        while True:
            for position, (at, event) in enumerate(self.events):
                if event["type"] in types and (number is None or event.get("n") == number):
                    del self.events[: position + 1]
                    return at, event
                if event["type"] == "import_failed":
                    raise TimingAborted("the module could not be imported for the benchmark")
            if not self.process.pump(self.process.deadline - time.monotonic()):
                raise TimingAborted(self._ended())

    def _ended(self) -> str:
        process = self.process
        if process.timed_out:
            return f"the job's time limit of {self.job_wall_seconds:g} s ran out during the benchmark"
        if process.output_limited:
            return "the benchmark printed more than the output limit"
        return "the process ended during the benchmark"


def run_timed_cases(grading, *, check: Callable[[int, dict, object], None]) -> None:
    """Time every timed case of ``grading`` (a ``gpu_runner.grading.Grading``); ``check(index,
    runtime, output)`` then checks each: ``runtime`` is what the worker measured (``Timed``),
    ``output`` what the student's process said (``{"calls": [fingerprint, ...]}``)."""
    indices = [i for i, case in enumerate(grading.cases) if "timed" in case]
    if not indices:
        return
    tests = grading.tests
    if any(t.outcome != "passed" for i, t in enumerate(tests) if i not in indices):
        for i in indices:
            _publish(grading, i, "failed", NOT_TIMED)
        return
    wants_reference = any(grading.cases[i]["timed"].get("reference") for i in indices)
    if wants_reference and grading.lab.reference_module is None:
        raise RuntimeError(f"lab {grading.lab.slug}: a timed case asks for a reference but there is no reference.py")
    processes: list[_Process] = []
    try:
        student = _start(grading, "student")
        processes.append(student)
        reference = _start(grading, "reference") if wants_reference else None
        if reference is not None:
            processes.append(reference)
        for process in processes:
            try:
                process.wait_for("imported")
            except TimingAborted as exc:
                if process.role == "reference":
                    raise RuntimeError(f"the lab's reference.py did not start: {exc}") from None
                raise
        for index in indices:
            timed, fingerprints = _time_case(grading, index, student, reference)
            check(index, timed.as_runtime(), {"calls": fingerprints})
    except TimingAborted as exc:
        error = _student_error(processes)
        if error is not None:
            grading.case_errors.append(error)  # a forbidden call in a timed call is one like any other
        detail = ": " + bounded(describe_error(error), 3000) if error is not None else ""
        for i in indices:
            if tests[i].outcome == "not_run":
                _publish(grading, i, "failed", f"benchmark: {exc}{detail}")
    finally:
        for process in processes:
            process.process.stop()
            process.folder.remove()


def _time_case(grading, index: int, student: _Process, reference: _Process | None) -> tuple[Timed, list]:
    case = grading.cases[index]
    spec = case["timed"]
    calls, warmup = int(spec.get("calls", 20)), int(spec.get("warmup", 3))
    use_reference = reference if spec.get("reference") else None
    probe_gen = torch.Generator().manual_seed(secrets.randbits(62))
    timed = Timed(
        probes={
            name: torch.randn(shape, generator=probe_gen, dtype=getattr(torch, spec.get("dtype", "float32")))
            for name, shape in spec["outputs"].items()
        },
        reference_seconds=[] if use_reference else None,
    )
    setup = {"inputs": case.get("inputs", {}), "probes": timed.probes, "world_size": int(spec.get("world_size", 1))}
    fingerprints: list[dict] = []
    for process in (student, use_reference):
        if process is not None:
            name = _write_runner_file(process.folder, _saved(setup))
            process.process.send(f"setup {name}\n".encode())
            process.wait_for("ready")
    frozen, guarded = False, use_reference is not None
    try:
        for number in range(-warmup, calls):
            inputs = grading.grader.call_inputs(case, secrets.randbits(62))
            order = [student, use_reference] if number % 2 == 0 else [use_reference, student]
            for process in order:
                if process is None:
                    continue
                if process is student and frozen:
                    frozen = not student.box.thaw()
                seconds, event = _call(process, number, inputs)
                if process is student:
                    fingerprints.append(event.get("fp"))
                    if use_reference is not None:  # frozen while the reference runs
                        frozen = student.box.freeze()
                        guarded = guarded and frozen
                if number >= 0:
                    (timed.seconds if process is student else timed.reference_seconds).append(seconds)
            if number >= 0:
                timed.inputs.append(inputs)
    finally:
        if frozen:
            student.box.thaw()
    timed.frozen = guarded
    return timed, fingerprints[warmup:]


def _call(process: _Process, number: int, inputs: dict) -> tuple[float, dict]:
    name = write_bundle(process.folder, inputs)
    try:
        started = time.monotonic()
        process.process.send(f"call {number} {name}\n".encode())
        at, event = process.wait_for("called", "call_failed", number=number)
    finally:
        (process.folder.runner / CALLS_DIR / name).unlink(missing_ok=True)
    if event["type"] == "call_failed":
        which = f"timed call {number + 1}" if number >= 0 else "a warm-up call"
        if process.role == "reference":
            raise RuntimeError(f"the lab's reference.py failed in {which}")
        raise TimingAborted(f"your code raised an error in {which}")
    return at - started, event


def _start(grading, role: str) -> _Process:
    lab = grading.lab
    folder = new_job_folder(f"{grading.job_id}{role[0]}", lab=lab, config=grading.config, limits=grading.limits)
    calls = folder.runner / CALLS_DIR
    calls.mkdir(mode=0o311)  # the job may open a call's file by its name, never list the folder
    calls.chmod(0o311)
    if role == "student":
        for name, text in grading.files.items():
            folder.write_box_file(name, text.encode("utf-8"))
        entry, forbidden = lab.entry, lab.forbidden
    else:
        folder.write_box_file("reference.py", lab.reference_module.read_bytes())
        entry, forbidden = "reference.py", ()
    gpus = sandbox.assigned_gpus() if grading.device == "cuda" else ()
    # The lab's wall time covers the whole job, tests and benchmark: these processes get what is left.
    wall = float(grading.limits["wall_seconds"])
    left = wall - (time.time() - grading.marks.get("launched", time.time()))
    box = sandbox.Sandbox(grading.config, folder, {**grading.limits, "wall_seconds": max(left, 1.0)}, gpus)
    holder = _Process(role=role, process=None, folder=folder, box=box, job_wall_seconds=wall)  # type: ignore[arg-type]

    def on_event(event: dict) -> None:
        holder.events.append((time.monotonic(), event))
        del holder.events[:-64]  # a flood keeps the newest only

    marked = LineMarker("[benchmark] ")

    def on_output(text: str) -> None:
        if role == "student":  # the same module prints again in this process: say which one it is
            grading.sink.publish(EventType.LOG, {"stream": "output", "text": marked(text)})

    try:
        holder.process = launcher.JobProcess(
            harness_command(grading.config, folder, mode="timed", entry=entry, forbidden=forbidden),
            sandbox=box,
            env=job_environment(folder, device=grading.device, interpreted=grading.interpreted),
            on_output=on_output,
            on_event=on_event,
        )
    except BaseException:
        folder.remove()
        raise
    return holder


def write_bundle(folder: JobFolder, inputs: dict) -> str:
    """Write one call's inputs for ``harness._load_bundle``: a JSON header, then each tensor's
    bytes at a 64-byte-aligned offset. Returns the random file name."""
    values = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
    tensors, chunks, offset = [], [], 0
    for key, tensor in inputs.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        data = tensor.detach().contiguous().cpu().view(torch.uint8).reshape(-1).numpy().tobytes()
        tensors.append([key, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), 0, len(data)])
        chunks.append(data)
    header = json.dumps({"values": values, "tensors": tensors}).encode()
    offset = _aligned(8 + len(header) + 1024)  # room for the offsets to grow the header a little
    for entry, data in zip(tensors, chunks, strict=True):
        entry[3] = offset
        offset = _aligned(offset + len(data))
    header = json.dumps({"values": values, "tensors": tensors}).encode()
    body = bytearray(len(header).to_bytes(8, "little") + header)
    for (_, _, _, start, _), data in zip(tensors, chunks, strict=True):
        body += b"\0" * (start - len(body)) + data
    return _write_runner_file(folder, bytes(body))


def _aligned(offset: int) -> int:
    return (offset + 63) // 64 * 64


def _write_runner_file(folder: JobFolder, data: bytes) -> str:
    name = secrets.token_hex(16)
    path = folder.runner / CALLS_DIR / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return name


def _saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _publish(grading, index: int, outcome: str, message: str) -> None:
    test = grading.tests[index]
    test.settle(outcome, message)
    grading.sink.publish(EventType.TEST, test.as_dict())


def _student_error(processes: list[_Process]) -> dict | None:
    """The student's error in a timed call, from the record its harness saved, if any."""
    student = next((p for p in processes if p.role == "student"), None)
    if student is None:
        return None
    record = read_record(student.folder, "timed")
    if record.get("ok") is False and record["error"].get("type") != "NoOutput":
        return record["error"]
    return None

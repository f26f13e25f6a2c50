"""The timing phase: a lab's timed cases, timed call by call on the worker's own clock.

A figure that ranks must not be measured where the student's code runs (docs/security.md,
invariant 1), and the inputs of a timed call must not be known before the call starts
(invariant 2). So, once every correctness test has passed, the worker starts two fresh sandboxes:

- the *student's* process, with the submission imported and the lab's forbidden calls patched
  (a distributed lab's student ranks are the processes that ran its distributed cases, kept for
  this: ``rankgroup.take_for_timing``);
- the *reference* process, with the lab's ``reference.py`` imported instead: a clean process in
  which no student code ever ran (only when the timed case asks for a reference).

Both run the harness's timed calls and wait for them. For each call the worker draws a fresh
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

from gpu_runner import rankgroup
from gpu_runner.jobfolder import JobFolder
from gpu_runner.jobsetup import describe_error, read_record
from gpu_runner.text import LineMarker, bounded
from labs.protocol import EventType

CALLS_DIR = rankgroup.CALLS_DIR  # in the runner folder: written by the worker, opened by name in the sandbox
HEADER_LIMIT = 1 << 20
NOT_TIMED = "not timed: every correctness test must pass before the benchmark runs"


@dataclass
class Timed:
    """One timed case as the worker saw it: what ``check`` gets in ``case["runtime"]["timing"]``."""

    seconds: list[float] = field(default_factory=list)  # the student's calls, on the worker's clock
    reference_seconds: list[float] | None = None  # the reference's, interleaved with them
    inputs: list[dict] = field(default_factory=list)  # every timed call's inputs
    probes: dict[str, torch.Tensor] = field(default_factory=dict)
    frozen: bool = False  # whether the student's process was frozen while the reference ran
    network_bytes: list[int] | None = None  # a distributed case's: what its ranks sent each other, per call

    def as_runtime(self) -> dict:
        return {
            "network_bytes": self.network_bytes,
            "seconds": self.seconds,
            "reference_seconds": self.reference_seconds,
            "inputs": self.inputs,
            "probes": self.probes,
            "frozen": self.frozen,
        }


def run_timed_cases(grading, *, check: Callable[[int, dict, object], None]) -> None:
    """Time every timed case of ``grading`` (a ``gpu_runner.grading.Grading``); ``check(index,
    runtime, output)`` then checks each: ``runtime`` is what the worker measured (``Timed``),
    ``output`` what the student's processes said (``{"calls": [fingerprint, ...]}``).

    A distributed timed case (``"world_size"`` in its ``timed``) runs each side on a group of ranks,
    each rank in its own sandbox on a metered network (``gpu_runner.rankgroup``); every timed case
    of a lab has the same world size."""
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
    sizes = {int(grading.cases[i]["timed"].get("world_size", 1)) for i in indices}
    if len(sizes) != 1:
        raise RuntimeError(f"lab {grading.lab.slug}: its timed cases ask for different world sizes {sorted(sizes)}")
    world_size = sizes.pop()
    groups: list[rankgroup.Group] = []
    try:
        kept = rankgroup.take_for_timing(grading, world_size)
        student = kept or _start(grading, "student", world_size)
        groups.append(student)
        reference = _start(grading, "reference", world_size) if wants_reference else None
        if reference is not None:
            groups.append(reference)
        for group in groups:
            if group is kept:
                continue
            try:
                group.wait_all("imported", members=group.members)
                if world_size > 1:
                    group.join(world_size)
            except rankgroup.GroupEnded as exc:
                if group.role == "reference":
                    raise RuntimeError(f"the lab's reference.py did not start: {exc}") from None
                raise
        for index in indices:
            timed, fingerprints = _time_case(grading, index, student, reference)
            check(index, timed.as_runtime(), {"calls": fingerprints})
    except rankgroup.GroupEnded as exc:
        where, error = _student_error(groups)
        if error is not None:
            grading.case_errors.append(error)  # a forbidden call in a timed call is one like any other
        detail = f": {where}" + bounded(describe_error(error), 3000) if error is not None else ""
        for i in indices:
            if tests[i].outcome == "not_run":
                _publish(grading, i, "failed", f"benchmark: {_aborted(exc)}{detail}")
    finally:
        for group in groups:
            group.stop()


def _aborted(exc: rankgroup.GroupEnded) -> str:
    text = str(exc)
    if text.startswith(("your code", "the module")):
        return text
    return f"{text} during the benchmark"


def _time_case(grading, index: int, student: rankgroup.Group, reference: rankgroup.Group | None) -> tuple[Timed, list]:
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
        network_bytes=[] if student.ranks > 1 and student.network is not None else None,
    )
    setup = _saved({"inputs": case.get("inputs", {}), "probes": timed.probes})
    fingerprints: list[dict] = []
    for group in (student, use_reference):
        if group is not None:
            group.send(lambda member: f"setup {_write_runner_file(member.folder, setup)}\n".encode())
            group.wait_all("ready")
    frozen, guarded = False, use_reference is not None
    try:
        for number in range(-warmup, calls):
            inputs = grading.grader.call_inputs(case, secrets.randbits(62))
            order = [student, use_reference] if number % 2 == 0 else [use_reference, student]
            for group in order:
                if group is None:
                    continue
                if group is student and frozen:
                    student.thaw()
                    frozen = False
                before = group.sent_bytes()
                seconds, fingerprint = _call(group, number, inputs)
                if group is student:
                    fingerprints.append(fingerprint)
                    if number >= 0 and timed.network_bytes is not None:
                        timed.network_bytes.append(sum(group.sent_bytes()) - sum(before))
                    if use_reference is not None:  # frozen while the reference runs
                        frozen = student.freeze()
                        guarded = guarded and frozen
                if number >= 0:
                    (timed.seconds if group is student else timed.reference_seconds).append(seconds)
            if number >= 0:
                timed.inputs.append(inputs)
    finally:
        if frozen:
            student.thaw()
    timed.frozen = guarded
    return timed, fingerprints[warmup:]


def _call(group: rankgroup.Group, number: int, inputs: dict) -> tuple[float, dict]:
    """One timed call on every member of ``group``: from the first ``call`` written to the last
    ``called`` read, on the worker's clock; the fingerprints, ``name@rank`` for a group of ranks."""
    # A distributed case's call_inputs may return one dict per rank: each rank gets only its own.
    names = {
        member.rank: write_bundle(member.folder, inputs[member.rank] if isinstance(inputs, list) else inputs)
        for member in group.active
    }
    try:
        started = time.monotonic()
        group.send(lambda member: f"call {number} {names[member.rank]}\n".encode())
        try:
            replies = group.wait_all(
                "called", "call_failed", number=number, failed=lambda event: event["type"] == "call_failed"
            )
        except rankgroup.GroupEnded as exc:
            if exc.found and any(event["type"] == "call_failed" for _, event in exc.found.values()):
                replies = list(exc.found.values())
            elif group.role == "reference" and not any(m.process.timed_out for m in group.members):
                raise RuntimeError(f"the lab's reference.py stopped in timed call {number + 1}: {exc}") from None
            else:
                raise  # the job's time ran out (the student's calls took it) or the student's process ended
    finally:
        for member in group.active:
            (member.folder.runner / CALLS_DIR / names[member.rank]).unlink(missing_ok=True)
    if any(event["type"] == "call_failed" for _, event in replies):
        which = f"timed call {number + 1}" if number >= 0 else "a warm-up call"
        if group.role == "reference":
            raise RuntimeError(f"the lab's reference.py failed in {which}")
        raise rankgroup.GroupEnded(f"your code raised an error in {which}")
    fingerprint: dict = {}
    for rank, (_, event) in enumerate(replies):
        fp = event.get("fp")
        if group.ranks == 1:
            return replies[0][0] - started, fp
        for name, value in fp.items() if isinstance(fp, dict) else ():
            fingerprint[f"{name}@{rank}"] = value
    return max(at for at, _ in replies) - started, fingerprint


def _start(grading, role: str, world_size: int) -> rankgroup.Group:
    marked = LineMarker("[benchmark] ")

    def on_output(rank: int, text: str) -> None:
        if role == "student":  # the same module prints again in this process: say which one it is
            grading.sink.publish(EventType.LOG, {"stream": "output", "text": marked(text), "inputs": True})

    return rankgroup.Group.start(grading, role=role, ranks=world_size, mode="timed", on_output=on_output, tag="t")


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


def _student_error(groups: list[rankgroup.Group]) -> tuple[str, dict | None]:
    """The student's error in a timed call, from the record a rank's harness saved, if any, and
    where (``"rank 1 of 4: "`` in a group of ranks): the first rank whose error is its own, not a
    lost connection to a failed peer."""
    student = next((g for g in groups if g.role == "student"), None)
    errors = []
    for member in (student.active or student.members) if student is not None else ():
        record = read_record(member.folder, "timed")
        if record.get("ok") is False and record["error"].get("type") != "NoOutput":
            where = f"rank {member.rank} of {student.world_size}: " if student.world_size > 1 else ""
            errors.append((where, record["error"]))
    own = [e for e in errors if not rankgroup.PEER_LOSS.search(e[1].get("message", "").split("\n")[0])]
    return (own or errors or [("", None)])[0]

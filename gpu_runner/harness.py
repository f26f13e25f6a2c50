"""The untrusted half of grading: runs inside the sandbox, next to the student's code.

This file is copied into the job's read-only runner folder, next to ``lab_run.py`` (the source
of the lab's ``run``), and executed as a script; it imports nothing from the project. It patches
the lab's forbidden functions to raise, imports the student's entry module, tells the worker so
on the event channel, and only then learns where the cases are (inputs only: no seed, no
references). For each case it calls ``run`` on a fresh clone of the inputs, re-applying the
patches first, and saves what ``run`` returned as plain tensors for the worker to check. It never
decides a verdict: the student's code shares this process and could change anything here, so
nothing it writes is trusted beyond being data.

The runner folder's ``lib/`` (``kernels/bench.py``, the timing harness) is importable, so a
lab's ``run`` can ``from kernels import bench``; the reference kernels are not shipped.

A rank of a distributed case (``AISYS_WORLD_SIZE`` set: the number of processes in its group) is
one such process in its own sandbox (``gpu_runner.rankgroup``). It does what the worker names, one
command at a time, so that every rank is in the same case: ``join`` (re-form the gloo process group
over the network its sandbox shares with its peers, on the first ranks only), ``case``, and the
timed calls' ``setup`` and ``call``; ``run`` learns its place from ``harness.rank`` and
``harness.world_size`` (and ``inputs["rank"]``, ``inputs["world_size"]``).

Usage: python harness.py cases|timed <job folder> <entry file> <forbidden dotted names, comma separated>
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import sys
import time
import traceback

import numpy
import torch

EVENT_FD = int(os.environ.get("AISYS_EVENT_FD", "-1"))
OUTPUT_DIR = "_outputs"
RUNNER = os.path.dirname(os.path.abspath(__file__))
RUN_MODULE = os.path.join(RUNNER, "lab", "run.py")  # the lab's run.py
RANK = int(os.environ.get("AISYS_RANK", "0"))
WORLD_SIZE = int(os.environ.get("AISYS_WORLD_SIZE", "1"))  # processes in this rank's group (1: a plain job)
GROUP_TIMEOUT_SECONDS = 600.0  # gloo's own, per operation: the worker's deadline comes first
CALLS = os.path.join(RUNNER, "calls")  # timed calls' inputs: this process may open them by name, not list them


class ForbiddenCall(Exception):
    """Raised by a patched library function the lab forbids."""

    def __init__(self, name: str):
        super().__init__(f"forbidden call: {name}() is not allowed in this lab; write it yourself")
        self.name = name


class NotTimed(Exception):
    """The worker declined to time a batch (a correctness test failed first)."""


def emit(event_type: str, **data) -> None:
    if EVENT_FD < 0:
        return
    line = json.dumps({"type": event_type, **data}) + "\n"
    os.write(EVENT_FD, line.encode())


def _resolve(dotted: str):
    """The object holding the last name, and that name: the longest importable module prefix,
    then attributes, so ``torch.Tensor.softmax`` (a method) works like ``torch.softmax``."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:-1]:
            owner = getattr(owner, name)
        return owner, parts[-1]
    raise ImportError(f"cannot resolve the forbidden name {dotted!r}")


class Harness:
    """Keeps the lab's forbidden functions patched out; ``run`` may use the originals.

    The patches go in before the student's module is imported, so ``from torch import add`` at
    import time already gets the stub, and they are re-applied before every case, so assigning the
    original back does not last. Everything ``patch`` needs is bound here, before the student's
    code runs, so replacing this class's methods or ``builtins.setattr`` later changes nothing.
    """

    rank = RANK  # this process's rank in its distributed case (0 of 1 otherwise)
    world_size = WORLD_SIZE  # the size of the process group this rank last joined

    def __init__(self, forbidden: list[str]):
        self._originals = {}
        targets = []
        for name in forbidden:
            module, attr = _resolve(name)
            self._originals[name] = getattr(module, attr)
            targets.append((module, attr, _forbidden_stub(name)))

        def patch(_targets=tuple(targets), _setattr=setattr) -> None:
            for module, attr, stub in _targets:
                _setattr(module, attr, stub)

        self.patch = patch

    def original(self, name: str):
        return self._originals[name]

    @staticmethod
    def forbidden(name: str) -> ForbiddenCall:
        """The error a lab's ``run`` raises for a forbidden call it detects itself."""
        return ForbiddenCall(name)

    @staticmethod
    def begin(label: str) -> None:
        """Before a timed batch (kernels.bench.run_case): the worker notes the time on its own clock
        and answers; timing starts only after that answer, so the worker's clock encloses it."""
        emit("bench_begin", label=label)
        answer = sys.stdin.readline().strip()
        if answer == "skip":
            raise NotTimed("not timed: every correctness test must pass before the benchmark runs")
        if answer != "begin":
            raise RuntimeError("the worker did not acknowledge the timed batch")

    @staticmethod
    def end(label: str) -> None:
        emit("bench_end", label=label)

    @staticmethod
    def meter(name: str, amount: int = 1) -> int:
        """Add ``amount`` to the worker's meter ``name`` for this case (a trial, a byte count) and
        return its total. The count lives in the worker, where the student's code cannot reset it;
        the lab's ``check`` reads ``case["runtime"]["meters"][name]``."""
        emit("meter", name=name, amount=int(amount))
        answer = sys.stdin.readline().split()
        if len(answer) != 2 or answer[0] != "count":
            raise RuntimeError("the worker did not answer the meter")
        return int(answer[1])


def _forbidden_stub(name: str):
    def stub(*args, **kwargs):
        raise ForbiddenCall(name)

    stub.__name__ = name.rpartition(".")[2]
    return stub


def _clone(value):
    """A deep copy in which every tensor is a fresh clone: a call cannot alter the next one's inputs."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return copy.deepcopy(value)


def _error(exc: BaseException) -> dict:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    code = getattr(exc, "errno", None)
    return {
        "type": type(exc).__name__,
        "message": _shorten(str(exc)),
        "traceback": "".join(lines)[-4000:],
        "forbidden": exc.name if isinstance(exc, ForbiddenCall) else "",
        "errno": code if isinstance(code, int) else None,
    }


def _shorten(text: str, limit: int = 8000) -> str:
    """Long messages keep their start and their end: a compiler's errors come last."""
    if len(text) <= limit:
        return text
    return text[:1000] + "\n[...]\n" + text[-(limit - 1000) :]


def _save(index: int | str, record: dict) -> None:
    path = os.path.join(OUTPUT_DIR, f"{index}.pt")
    try:
        torch.save(record, path)
    except Exception as exc:  # run() returned something that is not plain data
        torch.save(
            {
                "ok": False,
                "error": {
                    **_error(exc),
                    "type": "BadOutput",
                    "message": f"run() returned data that cannot be saved as plain tensors: {exc}",
                },
            },
            path,
        )


def _import_run_module():
    """The lab's run.py, imported as the module ``lab_run``."""
    spec = importlib.util.spec_from_file_location("lab_run", RUN_MODULE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["lab_run"] = module
    spec.loader.exec_module(module)
    return module


def _start(argv: list[str]):
    """Common to both modes: the job folder, the run module, the patches, the submission's import."""
    workdir, entry, forbidden = argv[2], argv[3], [n for n in argv[4].split(",") if n]
    os.chdir(workdir)
    sys.path.insert(0, workdir)
    sys.path.append(os.path.join(RUNNER, "lib"))
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    run_module = _import_run_module()  # the lab's code first: nothing of the student's ran yet
    harness = Harness(forbidden)
    emit("started")
    harness.patch()
    try:
        student = importlib.import_module(entry.removesuffix(".py"))
    except BaseException as exc:  # noqa: BLE001 - any failure at import is the submission's
        _save("import", {"ok": False, "error": _error(exc)})
        emit("import_failed")
        return None
    emit("imported")
    return student, harness, lambda module, inputs: run_module.run(module, inputs, harness)


def _join_group(size: int, port: int) -> bool:
    """Leave the gloo process group this rank is in, if any, and join a new one of ranks
    ``0..size-1`` (its peers are in sandboxes of their own, on the same private network; rank 0
    holds the rendezvous at ``port``); a rank ``>= size`` joins none and waits to be called again.
    False, with the error saved, if that fails."""
    import datetime

    import torch.distributed as dist

    try:
        if dist.is_initialized():
            dist.destroy_process_group()
        if RANK < size:
            dist.init_process_group(
                "gloo",
                init_method=f"tcp://{os.environ['AISYS_GROUP_ADDR']}:{port}",
                rank=RANK,
                world_size=size,
                timeout=datetime.timedelta(seconds=GROUP_TIMEOUT_SECONDS),
            )
    except BaseException as exc:  # noqa: BLE001 - a peer that never came, a student's patch
        _save("import", {"ok": False, "error": _error(exc)})
        emit("join_failed")
        return False
    Harness.world_size = size
    emit("joined", size=size)
    return True


def main(argv: list[str]) -> int:
    mode = argv[1]
    started = _start(argv)
    if started is None:
        return 3
    student, harness, run = started
    patch = harness.patch  # held in this frame: the student's module cannot swap it out
    if WORLD_SIZE > 1:
        return _serve_rank(student, harness, run, patch)
    if mode == "timed":
        return _serve_timed_calls(_TimedCalls(student, harness, sys.modules.get("lab_run")))
    command, _, cases_file = sys.stdin.readline().strip().partition(" ")
    cases = _load_cases(cases_file) if command == "go" else None
    if cases is None:
        return 4
    for case in cases.values():
        _run_case(case, student, patch, run)
    emit("done")
    return 0


def _load_cases(name: str) -> dict[int, dict] | None:
    """The cases' inputs the worker wrote for this process, by index (read once, then removed)."""
    if not name or os.path.basename(name) != name:
        return None
    payload = torch.load(name, weights_only=True)
    os.unlink(name)
    return {case["index"]: case for case in payload["cases"]}


def _run_case(case: dict, student, patch, run) -> None:
    index = case["index"]
    emit("case_start", index=index, name=case["name"])
    started_at = time.perf_counter()
    patch()
    inputs = _clone(case["inputs"])
    if WORLD_SIZE > 1:
        inputs.update(rank=RANK, world_size=Harness.world_size)
    try:
        record = {"ok": True, "value": run(student, inputs)}
    except BaseException as exc:  # noqa: BLE001 - reported per case, the next case still runs
        record = {"ok": False, "error": _error(exc)}
    _save(index, record)
    emit("case_done", index=index, duration=time.perf_counter() - started_at, ok=record["ok"])


def _serve_rank(student, harness: Harness, run, patch) -> int:
    """A rank answers the worker's commands, one per line, until the worker stops it:
    ``join <size> <port>`` (``_join_group``), ``go <file>`` (this rank's inputs of the distributed
    cases), ``case <index>``, and the timed calls' ``setup`` and ``call`` (``_timed_command``).
    Anything else ends the process."""
    cases: dict[int, dict] = {}
    calls = _TimedCalls(student, harness, sys.modules.get("lab_run"))
    for line in sys.stdin:
        command, *args = line.split() or [""]
        if command == "join" and len(args) == 2 and all(arg.isdigit() for arg in args):
            if not _join_group(int(args[0]), int(args[1])):
                return 3
        elif command == "go" and len(args) == 1:
            cases = _load_cases(args[0]) or {}
        elif command == "case" and len(args) == 1 and args[0].isdigit() and int(args[0]) in cases:
            _run_case(cases[int(args[0])], student, patch, run)
        elif not _timed_command(calls, command, args):
            return 4
    return 0


# ------------------------------------------------------------------------------------------------
# timed calls (docs/authoring-labs.md, "Timed cases"): the worker times each call on its own clock
# ------------------------------------------------------------------------------------------------


def _serve_timed_calls(calls: _TimedCalls) -> int:
    """Answer the worker's timed-call commands (``_timed_command``) until it stops this process.

    ``setup <file>``: the timed case's static inputs, the probes and its world size (nothing
    secret: read once, untimed). ``call <n> <file>``: map the call's inputs, which the worker wrote a
    moment ago under a name nobody could list, call the lab's ``timed(module, inputs, harness)``,
    and reply ``called`` with the fingerprint of what it returned: each output's dot product with
    its probe. The worker's clock runs from writing ``call`` to reading ``called``, so the work, and
    reading every element of the result (a lazy ``.grad`` included), happens inside it; the worker
    then checks each fingerprint against its own computation. This process keeps no time that
    counts. A distributed case's calls run on every rank at once, each rank a process like this
    one in a sandbox of its own (``gpu_runner.rankgroup``, ``_serve_rank``): each gets ``rank`` and
    ``world_size`` in its inputs, and the worker files each rank's fingerprints under ``name@rank``.
    """
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0
        command, *args = line.split() or [""]
        if not _timed_command(calls, command, args):
            return 4


def _timed_command(calls: _TimedCalls, command: str, args: list[str]) -> bool:
    """``setup <file>`` or ``call <n> <file>``; False for anything else."""
    if command == "setup" and len(args) == 1:
        calls.setup(os.path.join(CALLS, os.path.basename(args[0])))
        emit("ready")
    elif command == "call" and len(args) == 2 and args[0].lstrip("-").isdigit():
        number = int(args[0])
        try:
            fingerprint = calls.call(os.path.join(CALLS, os.path.basename(args[1])))
        except BaseException as exc:  # noqa: BLE001 - the worker stops timing and reports it
            _save("timed", {"ok": False, "error": _error(exc)})
            emit("call_failed", n=number)
            return True
        emit("called", n=number, fp=fingerprint)
    else:
        return False
    return True


class _TimedCalls:
    """The timed cases' state in this process: the static inputs and the probes."""

    def __init__(self, module, harness: Harness, run_module):
        self.module, self.harness, self.run_module = module, harness, run_module
        self.patch = harness.patch  # bound before any call: a call cannot swap it for the next one
        self.static: dict = {}
        self.probes: dict = {}

    def setup(self, path: str) -> None:
        setup = torch.load(path, weights_only=True)
        self.static, self.probes = setup["inputs"], setup["probes"]

    def call(self, path: str) -> dict[str, float]:
        inputs = _load_bundle(path)
        where = {"rank": RANK, "world_size": Harness.world_size} if WORLD_SIZE > 1 else {}
        self.patch()
        output = self.run_module.timed(self.module, {**self.static, **inputs, **where}, self.harness)
        return _fingerprint(output, self.probes)


def _load_bundle(path: str) -> dict:
    """A call's inputs: a JSON header (values, and each tensor's dtype, shape and offset), then the
    tensors' bytes, mapped copy-on-write rather than read (``gpu_runner.timing.write_bundle``)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    data = torch.from_file(path, shared=False, size=os.path.getsize(path), dtype=torch.uint8)
    inputs = dict(header["values"])
    for name, dtype, shape, offset, nbytes in header["tensors"]:
        inputs[name] = data[offset : offset + nbytes].view(getattr(torch, dtype)).reshape(shape)
    return inputs


def _fingerprint(output, probes: dict) -> dict[str, float]:
    """``{name: dot(output[name], probe)}`` for every probe: reads every element of every output."""
    if type(output) is not dict:
        raise TypeError(f"timed() returned a {type(output).__name__}; return a dict of named tensors")
    found = {}
    for name, probe in probes.items():
        value = output.get(name)
        if type(value) is numpy.ndarray:
            value = torch.from_numpy(value)
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError(
                f"timed() returned {type(value).__name__} for '{name}'; return a torch.Tensor or numpy array"
            )
        if tuple(value.shape) != tuple(probe.shape):
            raise ValueError(f"timed() returned '{name}' of shape {tuple(value.shape)}, expected {tuple(probe.shape)}")
        found[name] = float(torch.dot(value.detach().reshape(-1).to(probe.dtype), probe.reshape(-1)))
    return found


if __name__ == "__main__":
    sys.exit(main(sys.argv))

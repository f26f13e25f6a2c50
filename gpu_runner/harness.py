"""The untrusted half of grading: runs inside the sandbox, next to the student's code.

This file is executed as a script and imports nothing from the project. It imports the
student's entry module, tells the worker so on the event channel, and only then receives the
cases (inputs only: no seed, no references). For each case it calls the lab's ``run`` on a fresh
clone of the inputs with the lab's forbidden functions patched to raise, and saves what ``run``
returned as plain tensors for the worker to check. It never decides a verdict.

Usage: python harness.py <job folder> <entry file> <forbidden dotted names, comma separated>
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
import types

import torch

EVENT_FD = int(os.environ.get("AISYS_EVENT_FD", "-1"))
OUTPUT_DIR = "_outputs"
RUN_SOURCE = "_lab_run.py"
CASES_FILE = "_cases.pt"


class ForbiddenCall(Exception):
    """Raised by a patched library function the lab forbids."""

    def __init__(self, name: str):
        super().__init__(f"forbidden call: {name}() is not allowed in this lab; write it yourself")
        self.name = name


def emit(event_type: str, **data) -> None:
    if EVENT_FD < 0:
        return
    line = json.dumps({"type": event_type, **data}) + "\n"
    os.write(EVENT_FD, line.encode())


def _resolve(dotted: str):
    module_name, _, attr = dotted.rpartition(".")
    return importlib.import_module(module_name), attr


class Harness:
    """What the lab's ``run`` may use: the unpatched originals of the forbidden functions."""

    def __init__(self, forbidden: list[str]):
        self._originals = {}
        for name in forbidden:
            module, attr = _resolve(name)
            self._originals[name] = (module, attr, getattr(module, attr))

    def original(self, name: str):
        return self._originals[name][2]

    def patch(self) -> None:
        for name, (module, attr, _) in self._originals.items():
            setattr(module, attr, _forbidden_stub(name))

    def unpatch(self) -> None:
        for module, attr, original in self._originals.values():
            setattr(module, attr, original)


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
    return {
        "type": type(exc).__name__,
        "message": str(exc)[:2000],
        "traceback": "".join(lines)[-4000:],
        "forbidden": exc.name if isinstance(exc, ForbiddenCall) else "",
    }


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


def main(argv: list[str]) -> int:
    workdir, entry, forbidden = argv[1], argv[2], [n for n in argv[3].split(",") if n]
    os.chdir(workdir)
    sys.path.insert(0, workdir)
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    harness = Harness(forbidden)
    emit("started")
    try:
        student = importlib.import_module(entry.removesuffix(".py"))
    except BaseException as exc:  # noqa: BLE001 - any failure at import is the submission's
        _save("import", {"ok": False, "error": _error(exc)})
        emit("import_failed")
        return 3
    emit("imported")
    if sys.stdin.readline().strip() != "go":
        return 4
    payload = torch.load(CASES_FILE, weights_only=True)
    os.unlink(CASES_FILE)
    run_module = types.ModuleType("lab_run")
    run_module.harness = harness
    with open(RUN_SOURCE, encoding="utf-8") as f:
        exec(compile(f.read(), RUN_SOURCE, "exec"), run_module.__dict__)
    os.unlink(RUN_SOURCE)
    for index, case in enumerate(payload["cases"]):
        emit("case_start", index=index, name=case["name"])
        started = time.perf_counter()
        harness.patch()
        try:
            record = {"ok": True, "value": run_module.run(student, _clone(case["inputs"]))}
        except BaseException as exc:  # noqa: BLE001 - reported per case, the next case still runs
            record = {"ok": False, "error": _error(exc)}
        finally:
            harness.unpatch()
        _save(index, record)
        emit("case_done", index=index, duration=time.perf_counter() - started)
    emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

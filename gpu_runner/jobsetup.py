"""What a job's harness process needs, shared by the tests (``grading``) and the timing phase
(``timing``): its folder with the runner files, its environment, its command line, and reading
back the records it saved (checked by ``outputs`` and cut to length, whatever the sandbox wrote).

Trusted code, in the worker.
"""

from __future__ import annotations

from pathlib import Path

from gpu_runner import compile_cache, outputs, sandbox
from gpu_runner.jobfolder import JobFolder, UnsafeFile
from gpu_runner.text import bounded
from labs.catalog import LabFolder

HARNESS = Path(__file__).with_name("harness.py")
KERNELS = Path(__file__).resolve().parent.parent / "kernels"
LABS = Path(__file__).resolve().parent.parent / "labs"
# What a lab's run.py may import from the runner folder: the benchmark harness and the sandbox-side
# helpers, not the reference kernels or the graders.
RUNNER_LIBRARY = {
    "lib/kernels/__init__.py": KERNELS / "__init__.py",
    "lib/kernels/bench.py": KERNELS / "bench.py",
    "lib/labs/__init__.py": LABS / "__init__.py",
    "lib/labs/sandboxed.py": LABS / "sandboxed.py",
}

# Text from the job (error messages, tracebacks, what a check quotes of an output) is cut to these
# lengths before it is kept, stored or shown, whatever the harness in the sandbox claims to have cut.
MAX_MESSAGE_CHARS = 4000
MAX_COMPILER_CHARS = 16000

# The whole environment of a job's process: nothing of the worker's (no REDIS_URL, no secrets).
CLEAN_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "USER": "sandbox",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    # c10d warns on every rank of a distributed lab that the sandbox's hostname does not resolve.
    "TORCH_CPP_LOG_LEVEL": "ERROR",
}  # no PYTHON* variables: the harness runs with -I, which ignores them (-B and -u say it instead)


def new_job_folder(job_id: object, *, lab: LabFolder, config: sandbox.Config, limits: dict) -> JobFolder:
    """A job folder whose runner half holds the harness, the lab's run module and the sandbox's
    libraries; the caller writes the submission (or the reference) into its box."""
    folder = sandbox.create_job_folder(job_id, config=config, disk_mb=int(limits["disk_mb"]))
    folder.add_runner_file("harness.py", HARNESS.read_text(encoding="utf-8"))
    folder.add_runner_file("lab/run.py", lab.run_module.read_text(encoding="utf-8"))
    for name, source in RUNNER_LIBRARY.items():
        folder.add_runner_file(name, source.read_text(encoding="utf-8"))
    return folder


def job_environment(folder: JobFolder, *, device: str, interpreted: bool) -> dict[str, str]:
    """The whole environment of a job's process: nothing of the worker's."""
    scratch = "/tmp" if folder.sandboxed else folder.box_inside
    env = {
        **CLEAN_ENV,
        "HOME": scratch,
        "TMPDIR": scratch,
        "TRITON_CACHE_DIR": f"{scratch}/.triton",
        "TORCH_EXTENSIONS_DIR": f"{folder.box_inside}/{compile_cache.EXTENSIONS_DIR}",
    }
    if device != "cuda" and interpreted:
        env["TRITON_INTERPRET"] = "1"
    return env


def harness_command(config: sandbox.Config, folder: JobFolder, *, mode: str, entry: str, forbidden) -> list[str]:
    """The harness's command line: ``mode`` is ``cases`` (the tests) or ``timed`` (the timing phase)."""
    return [
        config.python_inside,
        "-I",  # isolated: no PYTHON* variables, no user site, no script folder on sys.path
        "-B",  # no __pycache__ in the job folder
        "-u",
        f"{folder.runner_inside}/harness.py",
        mode,
        folder.box_inside,
        entry,
        ",".join(forbidden),
    ]


def read_record(folder: JobFolder, index: int | str) -> dict:
    """The record the harness saved for case ``index`` (or "import"), checked and bounded:
    ``{"ok": True, "value": ...}`` or ``{"ok": False, "error": {...}}`` with the error's fields cut."""
    try:
        data = folder.read_box_file("_outputs", f"{index}.pt", max_bytes=outputs.MAX_FILE_BYTES)
        record = outputs.load(data)
    except FileNotFoundError:
        return _failure("NoOutput", "the harness wrote no output for this case")
    except (UnsafeFile, outputs.BadOutput) as exc:
        return _failure("BadOutput", f"the output was not readable: {exc}")
    if not isinstance(record, dict) or not isinstance(record.get("ok"), bool):
        return _failure("BadOutput", "malformed output")
    if record["ok"]:
        return {"ok": True, "value": record.get("value")}
    error = record.get("error") if isinstance(record.get("error"), dict) else {}
    code = error.get("errno")
    return {
        "ok": False,
        "error": {
            "type": bounded(error.get("type", "an error"), 100),
            "message": bounded(error.get("message", ""), MAX_COMPILER_CHARS),
            "traceback": bounded(error.get("traceback", ""), MAX_MESSAGE_CHARS),
            "forbidden": bounded(error.get("forbidden") or "", 200),
            "errno": code if isinstance(code, int) and not isinstance(code, bool) else None,
        },
    }


def _failure(kind: str, message: str) -> dict:
    return {"ok": False, "error": {"type": kind, "message": message, "traceback": "", "forbidden": "", "errno": None}}


def describe_error(error: dict) -> str:
    if error.get("forbidden"):
        return bounded(error.get("message") or "forbidden call", MAX_MESSAGE_CHARS)
    text = f"raised {error.get('type', 'an error')}: {bounded(error.get('message', ''), MAX_MESSAGE_CHARS // 2)}"
    if error.get("traceback"):
        text += "\n" + _student_frames(error["traceback"])
    return text


def _student_frames(trace: str) -> str:
    """The last lines of a traceback, where the student's code usually is."""
    lines = [line for line in trace.strip().splitlines() if line.strip()]
    return "\n".join(lines[-8:])

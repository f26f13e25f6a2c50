"""Start untrusted code in its own process and hold it to its limits.

This is the one place where a job's process is created, so the sandbox (bubblewrap, cgroups,
a non-root uid) hardens this function and nothing else. Today it gives the process a new
session, kills it with its parent, applies CPU-time and file-size rlimits, enforces the wall
time and output budget from the parent, and kills the whole process group when done.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

TAIL_BYTES = 8192
MAX_EVENT_LINE = 65536
PR_SET_PDEATHSIG = 1


@dataclass
class ProcessOutcome:
    returncode: int | None
    signal_name: str
    timed_out: bool
    output_limited: bool
    output_bytes: int
    output_tail: str
    wall_seconds: float


def _limit_child(cpu_seconds: float, file_size_bytes: int) -> Callable[[], None]:
    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the worker
        cpu = max(1, int(cpu_seconds))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_bytes, file_size_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return preexec


def launch(
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    limits: dict,
    on_output: Callable[[str], None],
    on_event: Callable[[dict], bytes | None],
) -> ProcessOutcome:
    """Run ``argv`` to completion under ``limits``.

    ``on_output`` receives stdout and stderr (merged) as they arrive, up to the output budget.
    ``on_event`` receives each JSON line the process writes on its event channel (the file
    descriptor named by AISYS_EVENT_FD); bytes it returns are written to the process's stdin.
    """
    event_read, event_write = os.pipe()
    env = {**env, "AISYS_EVENT_FD": str(event_write)}
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=(event_write,),
        start_new_session=True,
        preexec_fn=_limit_child(limits["cpu_seconds"], int(limits["file_size_mb"]) * 1024 * 1024),
    )
    os.close(event_write)
    deadline = started + float(limits["wall_seconds"])
    budget = int(limits["output_bytes"])
    tail = bytearray()
    output_bytes = 0
    timed_out = output_limited = False
    event_buffer = b""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, "output")
    selector.register(event_read, selectors.EVENT_READ, "event")
    open_streams = 2
    try:
        while open_streams:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready = selector.select(timeout=min(remaining, 0.5))
            if not ready and proc.poll() is not None:
                break  # exited; a leftover child holding the pipes open is killed below
            for key, _ in ready:
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                if key.data == "output":
                    output_bytes += len(chunk)
                    tail = (tail + chunk)[-TAIL_BYTES:]
                    if output_bytes > budget:
                        output_limited = True
                        break
                    on_output(chunk.decode("utf-8", errors="replace"))
                else:
                    event_buffer += chunk
                    *lines, event_buffer = event_buffer.split(b"\n")
                    if len(event_buffer) > MAX_EVENT_LINE:
                        event_buffer = b""
                    for line in lines:
                        reply = _dispatch_event(line, on_event)
                        if reply:
                            try:
                                proc.stdin.write(reply)
                                proc.stdin.flush()
                            except BrokenPipeError:
                                pass
            if output_limited:
                break
    finally:
        _kill_group(proc)
        selector.close()
        os.close(event_read)
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
    returncode = proc.wait()
    signal_name = signal.Signals(-returncode).name if returncode < 0 else ""
    return ProcessOutcome(
        returncode=returncode,
        signal_name=signal_name,
        timed_out=timed_out,
        output_limited=output_limited,
        output_bytes=output_bytes,
        output_tail=tail.decode("utf-8", errors="replace"),
        wall_seconds=time.monotonic() - started,
    )


def _dispatch_event(line: bytes, on_event: Callable[[dict], bytes | None]) -> bytes | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return on_event(event) if isinstance(event, dict) and isinstance(event.get("type"), str) else None


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the process and everything it started (its session's process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

"""Start a job's untrusted process in its sandbox and hold it to its limits.

The one place a job's process is created. ``sandbox.Sandbox`` says how it is confined
(bubblewrap, cgroups, rlimits, the uid); this module runs it: the wall time and the output budget
are enforced here, from the parent, the event channel is read here, and when the job ends its
whole process group and cgroup are killed.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from gpu_runner.sandbox import Sandbox

TAIL_BYTES = 8192
MAX_EVENT_LINE = 65536
# How long the process may linger after the harness says it is done (flushing output, exiting)
# before it is killed; a submission that stops its own sandbox's init would otherwise hold the
# job until the wall time.
EXIT_GRACE_SECONDS = 2.0


@dataclass
class ProcessOutcome:
    returncode: int | None
    signal_name: str
    timed_out: bool
    output_limited: bool
    output_bytes: int
    output_tail: str
    wall_seconds: float
    memory_limited: bool = False
    peak_memory_bytes: int | None = None
    processes_limited: bool = False


def launch(
    command: list[str],
    *,
    sandbox: Sandbox,
    env: dict[str, str],
    on_output: Callable[[str], None],
    on_event: Callable[[dict], bytes | None],
) -> ProcessOutcome:
    """Run ``command`` in ``sandbox`` to completion under the sandbox's limits.

    ``on_output`` receives stdout and stderr (merged) as they arrive, up to the output budget.
    ``on_event`` receives each JSON line the process writes on its event channel (the file
    descriptor named by AISYS_EVENT_FD); bytes it returns are written to the process's stdin.
    """
    event_read, event_write = os.pipe()
    env = {**env, "AISYS_EVENT_FD": str(event_write)}
    limits = sandbox.limits
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            sandbox.argv(command),
            cwd=sandbox.cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(event_write,),
            start_new_session=True,
            preexec_fn=sandbox.preexec,
        )
    except BaseException:
        os.close(event_read)
        sandbox.release()
        raise
    finally:
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
    done_at: float | None = None
    try:
        while open_streams:
            now = time.monotonic()
            if done_at is not None and now > done_at + EXIT_GRACE_SECONDS:
                break
            remaining = deadline - now
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
                        event = _parse_event(line)
                        if event is None:
                            continue
                        if event["type"] == "done" and done_at is None:
                            done_at = time.monotonic()
                        reply = on_event(event)
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
    usage = sandbox.usage()
    sandbox.release()
    return ProcessOutcome(
        returncode=returncode,
        signal_name=sandbox.exit_signal(returncode),
        timed_out=timed_out,
        output_limited=output_limited,
        output_bytes=output_bytes,
        output_tail=tail.decode("utf-8", errors="replace"),
        wall_seconds=time.monotonic() - started,
        memory_limited=usage.oom_kills > 0,
        peak_memory_bytes=usage.peak_memory_bytes,
        processes_limited=usage.pids_limited,
    )


def _parse_event(line: bytes) -> dict | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("type"), str) else None


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the process and everything it started (its session's process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

"""Start a job's untrusted process in its sandbox and hold it to its limits.

The one place a job's process is created. ``sandbox.Sandbox`` says how it is confined
(bubblewrap, cgroups, rlimits, the uid); this module runs it: the wall time and the output budget
are enforced here, from the parent, the event channel is read here, and when the job ends its
whole process group and cgroup are killed.

The job is hostile and the loop below never waits for it: every pipe is non-blocking, replies to
the job's events are queued and written only when its stdin can take them (a job that floods
events and never reads its replies fills a bounded queue, not the worker's time), event lines are
bounded before they are parsed, and one deadline covers everything.
"""

from __future__ import annotations

import codecs
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
MAX_EVENT_LINE = 4096  # the harness's events are short, flat JSON objects
MAX_EVENTS = 200_000  # per job; past this the channel is drained and ignored
MAX_PENDING_REPLY_BYTES = 64 * 1024  # replies the job has not read; past this, no more are queued
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
    events_dropped: int = 0  # events past MAX_EVENTS or over MAX_EVENT_LINE, and replies never queued


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
    process = JobProcess(command, sandbox=sandbox, env=env, on_output=on_output, on_event=on_event)
    try:
        while process.pump(process.deadline - time.monotonic()):
            pass
    finally:
        outcome = process.stop()
    return outcome


class JobProcess:
    """One untrusted process in its sandbox: started, its pipes read and written without ever
    blocking on it, held to its wall time and output budget, and killed with all it started.

    ``launch`` runs one to the end; ``gpu_runner.timing`` drives two at once, call by call.
    """

    def __init__(
        self,
        command: list[str],
        *,
        sandbox: Sandbox,
        env: dict[str, str],
        on_output: Callable[[str], None],
        on_event: Callable[[dict], bytes | None],
    ):
        self.sandbox = sandbox
        self.on_output = on_output
        self.on_event = on_event
        self.budget = int(sandbox.limits["output_bytes"])
        event_read, event_write = os.pipe()
        options_read, options_write = os.pipe()
        program = sandbox.seccomp_filter()
        filter_read, filter_write = os.pipe() if program is not None else (None, None)
        argv, options = sandbox.argv(command, options_fd=options_read, seccomp_fd=filter_read)
        self.started = time.monotonic()
        self.deadline = self.started + float(sandbox.limits["wall_seconds"])
        inherited = (event_write, options_read) + ((filter_read,) if filter_read is not None else ())
        try:
            os.write(options_write, options)  # a few KiB: within the pipe's buffer
            os.close(options_write)
            if program is not None:
                os.write(filter_write, program)  # a few hundred bytes
                os.close(filter_write)
            self.proc = subprocess.Popen(
                argv,
                cwd=sandbox.cwd,
                env={**env, "AISYS_EVENT_FD": str(event_write)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=inherited,
                start_new_session=True,
                preexec_fn=sandbox.preexec,
            )
        except BaseException:
            os.close(event_read)
            sandbox.release()
            raise
        finally:
            for fd in inherited:
                os.close(fd)
        self.event_fd = event_read
        self.stdin = self.proc.stdin.fileno()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.selector = selectors.DefaultSelector()
        for fd in (self.proc.stdout.fileno(), event_read, self.stdin):
            os.set_blocking(fd, False)
        self.selector.register(self.proc.stdout.fileno(), selectors.EVENT_READ, "output")
        self.selector.register(event_read, selectors.EVENT_READ, "event")
        self.open_streams = 2
        self.tail = bytearray()
        self.output_bytes = 0
        self.timed_out = self.output_limited = False
        self.event_buffer = bytearray()
        self.events = 0
        self.events_dropped = 0
        self.pending = bytearray()  # replies not yet written to the job's stdin
        self.done_at: float | None = None
        self.ended = False

    def pump(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds (never past the deadline) for the job's pipes and handle
        what arrived; False once the job is over (exited, done, over a limit)."""
        if self.ended:
            return False
        now = time.monotonic()
        if self.done_at is not None and now > self.done_at + EXIT_GRACE_SECONDS:
            return self._end()
        if not self.open_streams:
            return self._end()
        remaining = self.deadline - now
        if remaining <= 0:
            self.timed_out = True
            return self._end()
        ready = self.selector.select(timeout=max(0.0, min(timeout, remaining, 0.5)))
        if not ready and self.proc.poll() is not None:
            return self._end()  # exited; a leftover child holding the pipes open is killed in stop()
        for key, _ in ready:
            if key.data == "stdin":
                self._write_pending()
                continue
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self.selector.unregister(key.fd)
                self.open_streams -= 1
            elif key.data == "output":
                if not self._output(chunk):
                    self.output_limited = True
                    return self._end()
            else:
                self._events(chunk)
        return True

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the job's stdin; it is written as the job reads."""
        self._queue(data)

    def stop(self) -> ProcessOutcome:
        """Kill the job and everything it started, and say how it ended."""
        self.ended = True
        self.sandbox.thaw()  # a frozen process cannot die (cgroup v1) until it is thawed
        _kill_group(self.proc)
        self.selector.close()
        os.close(self.event_fd)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        returncode = self.proc.wait()
        usage = self.sandbox.usage()
        self.sandbox.release()
        return ProcessOutcome(
            returncode=returncode,
            signal_name=self.sandbox.exit_signal(returncode),
            timed_out=self.timed_out,
            output_limited=self.output_limited,
            output_bytes=self.output_bytes,
            output_tail=bytes(self.tail).decode("utf-8", errors="replace"),
            wall_seconds=time.monotonic() - self.started,
            memory_limited=usage.oom_kills > 0,
            peak_memory_bytes=usage.peak_memory_bytes,
            processes_limited=usage.pids_limited,
            events_dropped=self.events_dropped,
        )

    def _end(self) -> bool:
        self.ended = True
        return False

    def _output(self, chunk: bytes) -> bool:
        self.output_bytes += len(chunk)
        self.tail += chunk
        del self.tail[:-TAIL_BYTES]
        if self.output_bytes > self.budget:
            return False
        self.on_output(self.decoder.decode(chunk))
        return True

    def _events(self, chunk: bytes) -> None:
        if self.events >= MAX_EVENTS:
            self.events_dropped += chunk.count(b"\n")
            return
        self.event_buffer += chunk
        *lines, rest = bytes(self.event_buffer).split(b"\n")
        self.event_buffer = bytearray(rest if len(rest) <= MAX_EVENT_LINE else b"")
        for line in lines:
            self.events += 1
            event = _parse_event(line) if len(line) <= MAX_EVENT_LINE else None
            if event is None:
                self.events_dropped += 1
                continue
            if event["type"] == "done" and self.done_at is None:
                self.done_at = time.monotonic()
            reply = self.on_event(event)
            if reply:
                self._queue(reply)
            if self.events >= MAX_EVENTS:
                return

    def _queue(self, reply: bytes) -> None:
        if len(self.pending) + len(reply) > MAX_PENDING_REPLY_BYTES:
            self.events_dropped += 1  # the job is not reading its replies: it will wait until its wall time
            return
        self.pending += reply
        self._write_pending()

    def _write_pending(self) -> None:
        if self.ended:
            return
        while self.pending:
            try:
                written = os.write(self.stdin, self.pending)
            except BlockingIOError:
                break
            except OSError:  # the job closed its stdin or exited
                self.pending.clear()
                break
            del self.pending[:written]
        registered = self.stdin in self.selector.get_map()
        if self.pending and not registered:
            self.selector.register(self.stdin, selectors.EVENT_WRITE, "stdin")
        elif not self.pending and registered:
            self.selector.unregister(self.stdin)


def _parse_event(line: bytes) -> dict | None:
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) and isinstance(event.get("type"), str) else None


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the process and everything it started (its session's process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

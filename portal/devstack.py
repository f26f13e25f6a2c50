"""Start the portal's processes on one machine: web (daphne), the portal worker with beat, and a
grading worker. ``make run`` uses it, and so do the end-to-end tests and bench/ (each with its own
environment), so there is one place that knows how the parts are started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


@dataclass
class Stack:
    env: dict[str, str]
    web_port: int | None = 8000
    portal_worker: bool = True
    beat: bool = True
    grading_queues: tuple[str, ...] = ("cpu",)
    grading_concurrency: int = 1
    log_dir: Path = BASE_DIR / "var" / "log"
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def commands(self) -> dict[str, list[str]]:
        py = sys.executable
        commands = {}
        if self.web_port is not None:
            commands["web"] = [
                py,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.web_port),
                "portal.asgi:application",
            ]
        if self.portal_worker:
            commands["worker-portal"] = [
                py,
                "-m",
                "celery",
                "-A",
                "portal",
                "worker",
                "-Q",
                "portal",
                "-c",
                "2",
                "-n",
                f"portal-{os.getpid()}@%h",
                "--loglevel=INFO",
            ]
            if self.beat:
                schedule = self.log_dir / f"celerybeat-{os.getpid()}"
                commands["worker-portal"] += ["-B", "-s", str(schedule)]
        if self.grading_queues:
            commands["worker-grading"] = [
                py,
                "-m",
                "celery",
                "-A",
                "gpu_runner",
                "worker",
                "-Q",
                ",".join(self.grading_queues),
                "-c",
                str(self.grading_concurrency),
                "--prefetch-multiplier=1",
                "-n",
                f"grading-{os.getpid()}@%h",
                "--loglevel=INFO",
            ]
        return commands

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in self.commands():
            self._spawn(name)

    def _spawn(self, name: str) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(
            self.commands()[name],
            cwd=BASE_DIR,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, name: str) -> None:
        """Kill a process and its children at once, as a crash or an OOM kill would."""
        proc = self.processes[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart(self, name: str, timeout: float = 60.0) -> None:
        log = self.log_dir / f"{name}.log"
        log.write_text("")  # wait_ready looks for this start's "ready" line
        self._spawn(name)
        self.wait_ready(timeout=timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the web server answers and every worker has connected to the broker."""
        deadline = time.monotonic() + timeout
        for name, proc in self.processes.items():
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log_dir / (name + '.log')}")
                if self._ready(name):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout:.0f} s; see {self.log_dir / (name + '.log')}")
                time.sleep(0.2)

    def _ready(self, name: str) -> bool:
        if name == "web":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/healthz", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False
        log = (self.log_dir / f"{name}.log").read_text(errors="replace")
        return " ready." in log

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes.clear()

    def __enter__(self) -> Stack:
        self.start()
        try:
            self.wait_ready()
        except Exception:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> int:
    """``make run``: start everything, print where to go, stop everything on Ctrl-C."""
    port = int(os.environ.get("PORT", "8000"))
    # One grading worker takes both queues: on a machine without a GPU, GPU labs are graded in
    # Triton's interpreter (correct results, timings shown but not ranked; docs/benchmarks.md).
    stack = Stack(env={}, web_port=port, grading_queues=("cpu", "gpu"))
    for log in stack.log_dir.glob("*.log"):
        log.unlink()
    stack.start()
    try:
        stack.wait_ready(timeout=120)
    except RuntimeError as exc:
        stack.stop()
        print(f"start-up failed: {exc}", file=sys.stderr)
        return 1
    logins = BASE_DIR / "var" / "demo-logins.txt"
    print(f"\nAISys Labs is running at http://127.0.0.1:{port}/  (logs in {stack.log_dir})")
    if logins.exists():
        print("Demo logins (username password):")
        for line in logins.read_text().splitlines():
            print(f"  {line}")
    print("Press Ctrl-C to stop.\n", flush=True)
    # The demo's finished rejudge: once the worker has graded the late-work demo, rejudge it (once).
    with open(stack.log_dir / "demo-rejudge.log", "ab") as log:
        follow_up = subprocess.Popen(
            [sys.executable, "manage.py", "demo", "--rejudge"], cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT
        )
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while all(p.poll() is None for p in stack.processes.values()):
            time.sleep(1)
        dead = [n for n, p in stack.processes.items() if p.poll() is not None]
        print(f"{', '.join(dead)} stopped; see {stack.log_dir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if follow_up.poll() is None:
            follow_up.kill()
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())

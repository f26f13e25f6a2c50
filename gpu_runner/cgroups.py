"""Per-job cgroups: memory and process limits, their counters, and killing whatever a job left.

One job gets one cgroup (v2) or one per v1 hierarchy (memory, pids, freezer), created before its
process starts and destroyed after it ends. A job can be frozen and thawed (``cgroup.freeze`` in
v2, the v1 freezer): the timing phase freezes the student's process while the reference runs, so
nothing it left running in the background can slow the reference down. ``detect_cgroups`` picks
the backend once per worker (``AISYS_CGROUPS``: auto, v2, v1, none); with none,
``gpu_runner.sandbox`` falls back to rlimits.
A cgroup whose processes cannot be killed in time (stuck in the kernel) is not forgotten: it goes
on a list that ``retry_leftovers`` works through before the next job, so a worker that grades for
weeks does not collect them.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from gpu_runner import settings

log = logging.getLogger(__name__)

KILL_WAIT_SECONDS = 2.0
FREEZE_WAIT_SECONDS = 2.0
# Cgroups that still held processes when their job ended; retried before each job.
_leftovers: list[JobCgroup] = []


@dataclass(frozen=True)
class Cgroups:
    """Where per-job cgroups are created: one v2 directory, or the v1 memory and pids hierarchies."""

    version: int  # 2, 1, or 0 when neither is usable (rlimits only)
    memory_parent: Path | None
    pids_parent: Path | None
    note: str  # how this was chosen, for the worker's start-up log
    freezer_parent: Path | None = None  # v1's freezer hierarchy; in v2 every job cgroup can freeze

    @property
    def parents(self) -> list[Path]:
        return list(dict.fromkeys(p for p in (self.memory_parent, self.pids_parent, self.freezer_parent) if p))

    def create(self, name: str, *, memory_bytes: int, processes: int) -> JobCgroup:
        memory_dir = pids_dir = freezer_dir = None
        if self.memory_parent is not None:
            memory_dir = self.memory_parent / name
            memory_dir.mkdir()
            if self.version == 2:
                _write(memory_dir / "memory.max", memory_bytes)
                _write_if_present(memory_dir / "memory.swap.max", 0)
            else:
                _write(memory_dir / "memory.limit_in_bytes", memory_bytes)
                _write_if_present(memory_dir / "memory.memsw.limit_in_bytes", memory_bytes)
        if self.pids_parent is not None:
            pids_dir = self.pids_parent / name
            if pids_dir != memory_dir:
                pids_dir.mkdir()
            _write(pids_dir / "pids.max", processes)
        if self.version == 2:
            freezer_dir = memory_dir or pids_dir
        elif self.freezer_parent is not None:
            freezer_dir = self.freezer_parent / name
            freezer_dir.mkdir()
        return JobCgroup(version=self.version, memory_dir=memory_dir, pids_dir=pids_dir, freezer_dir=freezer_dir)


@dataclass
class CgroupUsage:
    oom_kills: int = 0
    peak_memory_bytes: int | None = None
    pids_limited: bool = False


@dataclass
class JobCgroup:
    version: int
    memory_dir: Path | None
    pids_dir: Path | None
    freezer_dir: Path | None = None

    @property
    def dirs(self) -> list[Path]:
        return list(dict.fromkeys(d for d in (self.memory_dir, self.pids_dir, self.freezer_dir) if d is not None))

    @property
    def can_freeze(self) -> bool:
        return self.freezer_dir is not None

    def freeze(self) -> bool:
        """Stop every process of the job until ``thaw``; True once the kernel says they all are."""
        return self._set_frozen(True)

    def thaw(self) -> bool:
        return self._set_frozen(False)

    def _set_frozen(self, frozen: bool) -> bool:
        if self.freezer_dir is None:
            return False
        if self.version == 2:
            control, value, state = "cgroup.freeze", "1" if frozen else "0", "cgroup.events"
        else:
            control, value, state = "freezer.state", "FROZEN" if frozen else "THAWED", "freezer.state"
        try:
            _write(self.freezer_dir / control, value)
        except OSError:
            return False
        deadline = time.monotonic() + FREEZE_WAIT_SECONDS
        while time.monotonic() < deadline:
            try:
                text = (self.freezer_dir / state).read_text()
            except OSError:
                return False
            settled = (
                _keyed(self.freezer_dir / state).get("frozen") == int(frozen)
                if self.version == 2
                else (text.strip() == value)
            )
            if settled:
                return True
            time.sleep(0.0005)
        return False

    def join_current_process(self) -> None:
        """Move the calling process (the child, before exec) into the job's cgroups."""
        pid = str(os.getpid()).encode()
        for directory in self.dirs:
            fd = os.open(directory / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def usage(self) -> CgroupUsage:
        usage = CgroupUsage()
        if self.memory_dir is not None:
            if self.version == 2:
                usage.oom_kills = _keyed(self.memory_dir / "memory.events").get("oom_kill", 0)
                usage.peak_memory_bytes = _int_or_none(self.memory_dir / "memory.peak")
            else:
                usage.oom_kills = _keyed(self.memory_dir / "memory.oom_control").get("oom_kill", 0)
                usage.peak_memory_bytes = _int_or_none(self.memory_dir / "memory.max_usage_in_bytes")
        if self.pids_dir is not None:
            usage.pids_limited = _keyed(self.pids_dir / "pids.events").get("max", 0) > 0
        return usage

    def destroy(self) -> bool:
        """Kill whatever is left in the job's cgroups and remove them; False (and the cgroup kept on
        the leftover list) if a process survived ``KILL_WAIT_SECONDS`` of SIGKILL."""
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        removed = True
        if self.freezer_dir is not None and self.freezer_dir.exists():
            self.thaw()  # a v1-frozen process does not die until it is thawed
        for directory in reversed(self.dirs):
            if not directory.exists():
                continue
            while True:
                pids = _pids_in(directory)
                if not pids:
                    break
                if (directory / "cgroup.kill").exists():
                    _write(directory / "cgroup.kill", 1)
                else:
                    for pid in pids:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except (ProcessLookupError, PermissionError):
                            pass
                if time.monotonic() > deadline:
                    log.warning(
                        "cgroup %s still has processes %s after SIGKILL; retrying before the next job", directory, pids
                    )
                    break
                time.sleep(0.01)
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove cgroup %s yet: %s", directory, exc)
                removed = False
        if not removed and self not in _leftovers:
            _leftovers.append(self)
        return removed


def retry_leftovers() -> int:
    """Try again to remove the cgroups earlier jobs left; returns how many are still there."""
    for cgroup in list(_leftovers):
        _leftovers.remove(cgroup)
        cgroup.destroy()
    return len(_leftovers)


def _write(path: Path, value: int | str) -> None:
    path.write_text(f"{value}\n")


def _write_if_present(path: Path, value: int | str) -> None:
    if path.exists():
        _write(path, value)


def _keyed(path: Path) -> dict[str, int]:
    try:
        pairs = (line.split() for line in path.read_text().splitlines())
        return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}
    except OSError:
        return {}


def _int_or_none(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _pids_in(directory: Path) -> list[int]:
    try:
        return [int(line) for line in (directory / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def _cgroup_mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root within the hierarchy, type, super options) of every cgroup mount."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, super_options = fields[sep + 1], set(fields[sep + 3].split(","))
            if fstype in ("cgroup", "cgroup2"):
                mounts.append((fields[4], fields[3], fstype, super_options))
    return mounts


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under "" its v2 path."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _in_mount(mount_point: str, mount_root: str, path: str) -> Path:
    relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else path.lstrip("/")
    return Path(mount_point) / ("" if relative == "." else relative)


def _usable(directory: Path) -> bool:
    return directory.is_dir() and os.access(directory, os.W_OK)


def detect_cgroups() -> Cgroups:
    """Pick the cgroup backend: AISYS_CGROUPS=auto (default) | v2 | v1 | none."""
    wanted = settings.current().cgroups
    if wanted == "none":
        return Cgroups(0, None, None, "AISYS_CGROUPS=none: memory and processes limited by rlimits only")
    mounts, own = _cgroup_mounts(), _own_cgroups()
    notes = []
    if wanted in ("auto", "v2"):
        v2 = _detect_v2(mounts, own)
        if isinstance(v2, Cgroups):
            return v2
        notes.append(v2)
    if wanted in ("auto", "v1"):
        found: dict[str, Path] = {}
        for mount_point, root, fstype, options in mounts:
            for controller in ("memory", "pids", "freezer"):
                if fstype == "cgroup" and controller in options and controller in own:
                    directory = _in_mount(mount_point, root, own[controller])
                    if _usable(directory):
                        found.setdefault(controller, directory)
        if found.keys() & {"memory", "pids"}:
            missing = {"memory", "pids"} - set(found)
            note = "cgroup v1 " + ", ".join(f"{c} at {d}" for c, d in sorted(found.items()))
            if missing:
                note += f"; {', '.join(sorted(missing))} limited by rlimits"
            if "freezer" not in found:
                note += "; no freezer (timings are not guarded against a job's background work)"
            return Cgroups(1, found.get("memory"), found.get("pids"), note, found.get("freezer"))
        notes.append("cgroup v1: no writable memory or pids hierarchy")
    return Cgroups(0, None, None, "; ".join(notes) + ": memory and processes limited by rlimits only")


def _detect_v2(mounts, own) -> Cgroups | str:
    explicit = settings.current().cgroup_parent
    if explicit:
        base = explicit
    else:
        v2 = next(((m, r) for m, r, fstype, _ in mounts if fstype == "cgroup2"), None)
        if v2 is None or "" not in own:
            return "cgroup v2: not mounted"
        base = _in_mount(v2[0], v2[1], own[""])
    try:
        available = set((base / "cgroup.controllers").read_text().split())
    except OSError as exc:
        return f"cgroup v2: cannot read {base}/cgroup.controllers ({exc.strerror})"
    if not {"memory", "pids"} <= available:
        return f"cgroup v2: {base} does not offer the memory and pids controllers (has: {sorted(available) or 'none'})"
    if not _usable(base):
        return f"cgroup v2: {base} is not writable by this worker; delegate it (systemd Delegate=yes)"
    enabled = set((base / "cgroup.subtree_control").read_text().split())
    if not {"memory", "pids"} <= enabled:
        try:
            _write(base / "cgroup.subtree_control", "+memory +pids")
        except OSError as exc:
            return (
                f"cgroup v2: cannot enable memory and pids for children of {base} ({exc.strerror}); point "
                "AISYS_CGROUP_PARENT at an empty delegated cgroup (see docs/security.md)"
            )
    return Cgroups(2, base, base, f"cgroup v2 at {base}", base)

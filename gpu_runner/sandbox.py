"""How a job's untrusted process is confined: bubblewrap, cgroups, rlimits and a non-root uid.

All the hardening lives here and ``launcher.launch`` is its only caller, so what a submission can
and cannot do is read off this one file (docs/security.md explains the reasoning):

- bubblewrap (``bwrap``) gives the process its own user, pid, network (loopback only), IPC, UTS and
  cgroup namespaces; a read-only view of the system (/usr) and of the Python environment; the job
  folder (``/job``) as the only writable place that outlives the process, beside size-capped
  tmpfs mounts on /tmp and /dev/shm; no capabilities, no new privileges, no nested user
  namespaces; a new session; and it dies with the worker. /etc holds only what the dynamic
  loader and Python need, plus a synthetic passwd, group and hosts. The project (``labs/``, the
  grader, the worker's code) and the worker's environment are never visible.
- A worker running as root switches to the sandbox uid (``AISYS_SANDBOX_UID``, default 65534
  ``nobody``) before starting bwrap, so even outside the namespaces the job is not root.
- Memory and process counts are capped by a per-job cgroup: v2 (``memory.max``, ``pids.max``)
  where the worker has a delegated subtree, else the v1 memory and pids hierarchies, else
  rlimits (``RLIMIT_DATA``, ``RLIMIT_NPROC``) as the last resort. CPU time and file size are
  rlimits in every case; wall time and output bytes are enforced by the launcher.
- Without bubblewrap the worker refuses untrusted jobs (``SandboxUnavailable``, with the fix),
  unless ``AISYS_ALLOW_UNSANDBOXED=1``, which it logs loudly for every job.

The worker reads and writes the job folder only through ``JobFolder``, which never follows a
link or opens anything but a regular file there: the folder belongs to the submission.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

JOB_DIR = "/job"
RUNNER_DIR = "/opt/aisys"
SANDBOX_HOSTNAME = "sandbox"
ALLOW_UNSANDBOXED = "AISYS_ALLOW_UNSANDBOXED"
INSTALL_HINT = (
    "Install bubblewrap on every grading worker (Debian/Ubuntu: apt-get install bubblewrap; "
    "Fedora/RHEL: dnf install bubblewrap) and restart the worker. For local development only, "
    f"{ALLOW_UNSANDBOXED}=1 runs submissions without a sandbox."
)
# What the dynamic loader, Triton's compiler call and Python's locale code read from /etc.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime")
TOP_LEVEL_SYSTEM = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
NVIDIA_SHARED_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
PR_SET_PDEATHSIG = 1
CGROUP_KILL_WAIT_SECONDS = 2.0


class SandboxUnavailable(RuntimeError):
    """This worker cannot confine untrusted code; the message says how to fix it."""


class UnsafeFile(Exception):
    """A file the submission left in the job folder is not one the worker will read."""


# ------------------------------------------------------------------------------------------------
# cgroups
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cgroups:
    """Where per-job cgroups are created: one v2 directory, or the v1 memory and pids hierarchies."""

    version: int  # 2, 1, or 0 when neither is usable (rlimits only)
    memory_parent: Path | None
    pids_parent: Path | None
    note: str  # how this was chosen, for the worker's start-up log

    def create(self, name: str, *, memory_bytes: int, processes: int) -> JobCgroup:
        memory_dir = pids_dir = None
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
        return JobCgroup(version=self.version, memory_dir=memory_dir, pids_dir=pids_dir)


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

    @property
    def dirs(self) -> list[Path]:
        return list(dict.fromkeys(d for d in (self.memory_dir, self.pids_dir) if d is not None))

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

    def destroy(self) -> None:
        """Kill whatever is left in the job's cgroups and remove them."""
        deadline = time.monotonic() + CGROUP_KILL_WAIT_SECONDS
        for directory in reversed(self.dirs):
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
                    log.error("cgroup %s still has processes %s after SIGKILL; leaving it", directory, pids)
                    break
                time.sleep(0.01)
            try:
                directory.rmdir()
            except OSError as exc:
                log.warning("could not remove cgroup %s: %s", directory, exc)


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
    wanted = os.environ.get("AISYS_CGROUPS", "auto")
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
            for controller in ("memory", "pids"):
                if fstype == "cgroup" and controller in options and controller in own:
                    directory = _in_mount(mount_point, root, own[controller])
                    if _usable(directory):
                        found.setdefault(controller, directory)
        if found:
            missing = {"memory", "pids"} - set(found)
            note = "cgroup v1 " + " and ".join(f"{c} at {d}" for c, d in sorted(found.items()))
            if missing:
                note += f"; {', '.join(sorted(missing))} limited by rlimits"
            return Cgroups(1, found.get("memory"), found.get("pids"), note)
        notes.append("cgroup v1: no writable memory or pids hierarchy")
    return Cgroups(0, None, None, "; ".join(notes) + ": memory and processes limited by rlimits only")


def _detect_v2(mounts, own) -> Cgroups | str:
    explicit = os.environ.get("AISYS_CGROUP_PARENT")
    if explicit:
        base = Path(explicit)
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
    return Cgroups(2, base, base, f"cgroup v2 at {base}")


# ------------------------------------------------------------------------------------------------
# the worker's sandbox configuration
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    bwrap: str | None  # None: unsandboxed, development only
    switch_to: tuple[int, int] | None  # (uid, gid) a root worker drops to before starting bwrap
    inside_ids: tuple[int, int]  # uid and gid the job sees
    cgroups: Cgroups
    python_binds: tuple[tuple[str, str], ...]  # (host, inside) read-only binds for this worker's Python
    python_inside: str  # the interpreter, as the job sees it

    @property
    def sandboxed(self) -> bool:
        return self.bwrap is not None

    def describe(self) -> str:
        if not self.sandboxed:
            return "UNSANDBOXED (development only): " + self.cgroups.note
        who = f"uid {self.switch_to[0]}" if self.switch_to else f"the worker's uid {os.getuid()}"
        return f"bubblewrap {self.bwrap} as {who}; {self.cgroups.note}"


VENV_INSIDE = "/opt/venv"


def _python() -> tuple[tuple[tuple[str, str], ...], str]:
    """Read-only binds that make this worker's Python work in the sandbox, and its path there.

    A virtual environment is mounted at /opt/venv, so the job does not even learn where the
    project lives; a base installation outside /usr keeps its path, which is compiled into it.
    """
    binds = {}
    for prefix in (sys.base_prefix, sys.base_exec_prefix):
        if not (prefix == "/usr" or prefix.startswith("/usr/")):
            binds[prefix] = prefix
    if sys.prefix == sys.base_prefix:
        return tuple(binds.items()), sys.executable
    binds[sys.prefix] = VENV_INSIDE
    return tuple(binds.items()), os.path.join(VENV_INSIDE, os.path.relpath(sys.executable, sys.prefix))


def _sandbox_ids() -> tuple[int, int]:
    uid = int(os.environ.get("AISYS_SANDBOX_UID", "65534"))
    gid = int(os.environ.get("AISYS_SANDBOX_GID", str(uid)))
    if uid == 0 or gid == 0:
        raise SandboxUnavailable("AISYS_SANDBOX_UID and AISYS_SANDBOX_GID must not be 0 (root)")
    return uid, gid


@cache
def config() -> Config:
    """This worker's sandbox, checked once per process by really starting one."""
    ids = _sandbox_ids()
    switch_to = ids if os.geteuid() == 0 else None
    cgroups = detect_cgroups()
    bwrap = shutil.which(os.environ.get("AISYS_BWRAP", "bwrap"))
    if bwrap is None:
        if os.environ.get(ALLOW_UNSANDBOXED) == "1":
            log.warning("%s=1 and no bubblewrap: submissions will run UNSANDBOXED. %s", ALLOW_UNSANDBOXED, INSTALL_HINT)
            return Config(None, switch_to, ids, cgroups, (), sys.executable)
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed, so this worker refuses to run untrusted code. " + INSTALL_HINT
        )
    found = Config(bwrap, switch_to, ids, cgroups, *_python())
    _probe(found)
    return found


def _probe(found: Config) -> None:
    """Start one real sandbox running this Python, so a broken set-up fails here with bwrap's own words.

    Python only, no torch (about 40 ms instead of a second on every grading process's first job):
    a torch that the sandbox cannot load shows in the first job's output instead.
    """
    folder = JobFolder.create("probe", config=found, disk_mb=1)
    try:
        command = [found.python_inside, "-I", "-c", "import os; print(os.getuid())"]
        argv = bwrap_argv(found, folder, command, gpus=())
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=folder.root,
            env={"PATH": "/usr/bin:/bin"},
            preexec_fn=_drop_privileges(found.switch_to),
        )
    finally:
        folder.remove()
    if proc.returncode != 0 or proc.stdout.strip() != str(found.inside_ids[0]):
        raise SandboxUnavailable(
            f"bubblewrap is installed but cannot start a sandbox here (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-800:]}. It needs unprivileged user namespaces "
            "(sysctl user.max_user_namespaces > 0; kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu "
            "24.04+; in a container, the security_opt of docker-compose.yml), and the sandbox uid must be "
            f"able to read this worker's Python ({sys.executable}). See docs/security.md."
        )


def _drop_privileges(switch_to: tuple[int, int] | None):
    def preexec() -> None:
        if switch_to:
            os.setgroups([])
            os.setgid(switch_to[1])
            os.setuid(switch_to[0])

    return preexec


def log_startup() -> None:
    """Say at worker start-up how jobs will be confined, or loudly why they will be refused."""
    try:
        cfg = config()
        log.warning("job sandbox: %s", cfg.describe())
        swept = sweep_stale(cfg)
        if swept:
            log.warning("removed %d job folders and cgroups left by killed worker processes", swept)
    except SandboxUnavailable as exc:
        log.error("job sandbox unavailable; every job will fail with an infrastructure error: %s", exc)


# ------------------------------------------------------------------------------------------------
# the job folder
# ------------------------------------------------------------------------------------------------


class JobFolder:
    """One job's files on the host.

    ``box`` is the sandbox's ``/job`` (student files, the cases, the outputs); it belongs to the
    submission, so the worker only touches it through ``write_box_file`` and ``read_box_file``.
    ``runner`` is mounted read-only at ``/opt/aisys`` (the harness, the lab's ``run``, /etc files).
    As root, ``box`` is a tmpfs of ``disk_mb`` (so are the sandbox's /tmp and /dev/shm), so a
    submission cannot fill the worker's disk; the pages count against the job's memory limit.
    """

    def __init__(
        self, root: Path, *, sandboxed: bool, mounted: bool, disk_mb: int, owner: tuple[int, int] | None = None
    ):
        self.root = root
        self.owner = owner  # the sandbox's uid and gid, when the job runs as another user
        self.disk_mb = disk_mb
        self.box = root / "box"
        self.runner = root / "runner"
        self.sandboxed = sandboxed
        self.mounted = mounted

    @classmethod
    def create(cls, job_id: object, *, config: Config, disk_mb: int) -> JobFolder:
        safe_id = "".join(c for c in str(job_id) if c.isalnum())[:32]
        # The creating process's pid in the name lets a restarted worker sweep up what a killed one left.
        root = Path(tempfile.mkdtemp(prefix=f"aisys-job-{safe_id}-p{os.getpid()}-"))
        root.chmod(0o711)  # the sandbox uid may pass through to box/ and runner/, not list
        box, runner = root / "box", root / "runner"
        box.mkdir(mode=0o700)
        runner.mkdir(mode=0o755)
        mounted = False
        if config.sandboxed and os.geteuid() == 0:
            mounted = _mount_tmpfs(box, size_mb=disk_mb, owner=config.switch_to)
        if config.switch_to:
            os.chown(box, *config.switch_to)
        folder = cls(root, sandboxed=config.sandboxed, mounted=mounted, disk_mb=disk_mb, owner=config.switch_to)
        if config.sandboxed:
            _write_etc_files(folder, config.inside_ids)
        return folder

    @property
    def box_inside(self) -> str:
        """The job folder's path as the job's process sees it."""
        return JOB_DIR if self.sandboxed else str(self.box)

    @property
    def runner_inside(self) -> str:
        return RUNNER_DIR if self.sandboxed else str(self.runner)

    def add_runner_file(self, name: str, text: str) -> None:
        """Write a trusted file (``name`` may hold folders: ``lib/kernels/bench.py``) for the sandbox
        to read at /opt/aisys."""
        path = self.runner / name
        for parent in reversed(path.relative_to(self.runner).parents[:-1]):
            (self.runner / parent).mkdir(mode=0o755, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)

    def write_box_file(self, name: str, data: bytes, *, unique: bool = False) -> str:
        """Create a new file in the job folder without following anything already there.

        With ``unique`` the name gets a random suffix the submission cannot have prepared for.
        Returns the name used.
        """
        if unique:
            stem, dot, ext = name.rpartition(".")
            name = f"{stem}-{secrets.token_hex(8)}{dot}{ext}"
        box_fd = os.open(self.box, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=box_fd)
        finally:
            os.close(box_fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return name

    def write_box_tree(self, name: str, files: list[tuple[Path, bytes, int]]) -> None:
        """Before the job starts: create folder ``name`` in the job folder holding ``files``
        (relative path, bytes, modification time in ns), all writable by the job, times preserved."""
        root = self.box / name
        root.mkdir(mode=0o755)
        created = [root]
        for relative, data, mtime in files:
            path = root / relative
            for parent in reversed(path.relative_to(self.box).parents[:-1]):
                folder = self.box / parent
                if not folder.exists():
                    folder.mkdir(mode=0o755)
                    created.append(folder)
            path.write_bytes(data)
            path.chmod(0o755 if path.suffix == ".so" else 0o644)
            if self.owner:
                os.chown(path, *self.owner)
            os.utime(path, ns=(mtime, mtime))
        if self.owner:
            for folder in created:
                os.chown(folder, *self.owner)

    def read_box_file(self, *parts: str, max_bytes: int) -> bytes:
        """Read a regular file the submission wrote, refusing links, pipes and oversized files."""
        fds = [os.open(self.box, os.O_RDONLY | os.O_DIRECTORY)]
        try:
            for part in parts[:-1]:
                fds.append(_open_no_follow(part, os.O_RDONLY | os.O_DIRECTORY, fds[-1]))
            fds.append(_open_no_follow(parts[-1], os.O_RDONLY | os.O_NONBLOCK, fds[-1]))
            info = os.fstat(fds[-1])
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeFile(f"{'/'.join(parts)} is not a regular file")
            if info.st_size > max_bytes:
                raise UnsafeFile(f"{'/'.join(parts)} is over {max_bytes >> 20} MiB")
            with os.fdopen(os.dup(fds[-1]), "rb") as f:
                data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise UnsafeFile(f"{'/'.join(parts)} is over {max_bytes >> 20} MiB")
            return data
        finally:
            for fd in fds:
                os.close(fd)

    def remove(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "--lazy", str(self.box)], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def sweep_stale(cfg: Config) -> int:
    """Remove job folders and cgroups left by worker processes that were killed mid-job.

    Only those whose creating process (the pid in the name) is gone, so jobs of other workers on
    the same host are left alone. Returns how many were removed.
    """
    removed = 0
    places = [Path(tempfile.gettempdir())] + [
        p for p in {cfg.cgroups.memory_parent, cfg.cgroups.pids_parent} if p is not None
    ]
    for place in places:
        for path in place.glob("*aisys-job-*-p*-*"):
            pid = _creator_pid(path.name)
            if pid is None or _alive(pid):
                continue
            if place == places[0]:
                JobFolder(path, sandboxed=True, mounted=os.path.ismount(path / "box"), disk_mb=0).remove()
            else:
                JobCgroup(cfg.cgroups.version, path, path).destroy()
            removed += not path.exists()
    return removed


def _creator_pid(name: str) -> int | None:
    """``...-p<pid>-<mkdtemp suffix>``: the suffix never contains a dash."""
    parts = name.rsplit("-", 2)
    if len(parts) == 3 and parts[1].startswith("p") and parts[1][1:].isdigit():
        return int(parts[1][1:])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _open_no_follow(name: str, flags: int, dir_fd: int) -> int:
    try:
        return os.open(name, flags | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeFile(f"{name} is a link or not what the harness writes") from exc
        raise


def _mount_tmpfs(path: Path, *, size_mb: int, owner: tuple[int, int] | None) -> bool:
    uid, gid = owner or (os.getuid(), os.getgid())
    options = f"size={int(size_mb)}m,mode=0700,uid={uid},gid={gid},nosuid,nodev"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "aisys-job", str(path)], capture_output=True)
    if proc.returncode != 0:
        _warn_no_tmpfs(proc.stderr.decode(errors="replace").strip())
    return proc.returncode == 0


@cache
def _warn_no_tmpfs(reason: str) -> None:
    log.warning("job folders are plain directories (mounting a size-capped tmpfs failed: %s)", reason)


# ------------------------------------------------------------------------------------------------
# one sandboxed process
# ------------------------------------------------------------------------------------------------


def bwrap_argv(cfg: Config, folder: JobFolder, command: list[str], *, gpus: tuple[int, ...]) -> list[str]:
    """The bwrap command line that runs ``command`` in the sandbox for ``folder``."""
    uid, gid = cfg.inside_ids
    argv = [
        cfg.bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        str(uid),
        "--gid",
        str(gid),
        "--hostname",
        SANDBOX_HOSTNAME,
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for top in TOP_LEVEL_SYSTEM:
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for host, inside in cfg.python_binds:
        argv += ["--ro-bind", host, inside]
    argv += ["--dir", "/etc"]
    for name in ETC_FILES:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for name in ("passwd", "group", "hosts"):
        argv += ["--ro-bind", str(folder.runner / f"etc-{name}"), f"/etc/{name}"]
    tmp_bytes = str(folder.disk_mb * 1024 * 1024)
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", tmp_bytes, "--tmpfs", "/dev/shm"]
    for node in gpu_device_nodes(gpus):
        argv += ["--dev-bind", node, node]
    argv += ["--size", tmp_bytes, "--tmpfs", "/tmp"]
    argv += ["--bind", str(folder.box), JOB_DIR, "--ro-bind", str(folder.runner), RUNNER_DIR]
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", JOB_DIR, "--", *command]
    return argv


def _write_etc_files(folder: JobFolder, ids: tuple[int, int]) -> None:
    """The sandbox's /etc/passwd, group and hosts: the job's own user and localhost, nothing else."""
    uid, gid = ids
    passwd = f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{uid}:{gid}::/tmp:/bin/sh\n"
    folder.add_runner_file("etc-passwd", passwd)
    folder.add_runner_file("etc-group", f"root:x:0:\nsandbox:x:{gid}:\n")
    folder.add_runner_file("etc-hosts", f"127.0.0.1 localhost {SANDBOX_HOSTNAME}\n::1 localhost\n")


def assigned_gpus(dev: str = "/dev") -> tuple[int, ...]:
    """This worker's GPU: ``AISYS_GPU``, else the only one whose device node exists (a container
    given one GPU sees just its node, whatever its number), else GPU 0."""
    if os.environ.get("AISYS_GPU"):
        return (int(os.environ["AISYS_GPU"]),)
    present = sorted(int(name[6:]) for name in os.listdir(dev) if name[6:].isdigit() and name.startswith("nvidia"))
    return (present[0],) if len(present) == 1 else (0,)


def gpu_device_nodes(gpus: tuple[int, ...], dev: str = "/dev") -> list[str]:
    """The device nodes a job on ``gpus`` needs: its own GPUs' and the driver's shared ones, no others."""
    if not gpus:
        return []
    nodes = [f"{dev}/nvidia{int(i)}" for i in gpus]
    nodes += [f"{dev}/{name}" for name in NVIDIA_SHARED_NODES]
    return [node for node in nodes if os.path.exists(node)]


@dataclass
class Sandbox:
    """One job's confinement, from before its process starts until everything of it is gone."""

    cfg: Config
    folder: JobFolder
    limits: dict
    gpus: tuple[int, ...] = ()
    cgroup: JobCgroup | None = None

    def __post_init__(self) -> None:
        memory = int(self.limits["memory_mb"]) * 1024 * 1024
        processes = int(self.limits["processes"])
        if self.cfg.cgroups.version:
            name = f"aisys-{self.folder.root.name}"
            self.cgroup = self.cfg.cgroups.create(name, memory_bytes=memory, processes=processes)
        if not self.cfg.sandboxed:
            log.warning(
                "UNSANDBOXED job in %s (%s=1): the submission can read this machine's files and reach its "
                "network. Never run real students' code like this.",
                self.folder.root,
                ALLOW_UNSANDBOXED,
            )

    @property
    def cwd(self) -> Path:
        """Where to start the process: bwrap changes into /job itself."""
        return self.folder.root if self.cfg.sandboxed else self.folder.box

    def argv(self, command: list[str]) -> list[str]:
        if not self.cfg.sandboxed:
            return command
        return bwrap_argv(self.cfg, self.folder, command, gpus=self.gpus)

    def preexec(self) -> None:
        """Run in the child between fork and exec: cgroups and rlimits as root, then drop to the sandbox uid."""
        if self.cgroup is not None:
            self.cgroup.join_current_process()
        limits = self.limits
        cpu = max(1, int(limits["cpu_seconds"]))
        file_size = int(limits["file_size_mb"]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if self.cgroup is None or self.cgroup.memory_dir is None:
            memory = int(limits["memory_mb"]) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
        if self.cgroup is None or self.cgroup.pids_dir is None:
            processes = int(limits["processes"])
            resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
        _drop_privileges(self.cfg.switch_to)()
        # After the uid change, which clears it: the job dies with the worker.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    def exit_signal(self, returncode: int) -> str:
        """The signal that ended the job's process, also when bwrap reports it as exit code 128+N."""
        number = -returncode if returncode < 0 else returncode - 128 if self.cfg.sandboxed and returncode > 128 else 0
        try:
            return signal.Signals(number).name if number else ""
        except ValueError:
            return ""

    def usage(self) -> CgroupUsage:
        return self.cgroup.usage() if self.cgroup is not None else CgroupUsage()

    def release(self) -> None:
        """Kill what is left of the job and remove its cgroups; safe to call more than once."""
        if self.cgroup is not None:
            cgroup, self.cgroup = self.cgroup, None
            cgroup.destroy()

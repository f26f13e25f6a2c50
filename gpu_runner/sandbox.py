"""How a job's untrusted process is confined: bubblewrap, cgroups, rlimits and a non-root uid.

The hardening lives here and in its two helpers, ``gpu_runner.cgroups`` (memory and process
limits) and ``gpu_runner.jobfolder`` (the job's files); ``launcher.launch`` is the only caller, so
what a submission can and cannot do is read off these three files (docs/security.md explains
the reasoning):

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
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from gpu_runner import cgroups, seccomp, settings
from gpu_runner.cgroups import Cgroups, CgroupUsage, JobCgroup
from gpu_runner.jobfolder import JOB_DIR, RUNNER_DIR, JobFolder
from gpu_runner.netns import Seat

log = logging.getLogger(__name__)

SANDBOX_HOSTNAME = "sandbox"
ALLOW_UNSANDBOXED = settings.ALLOW_UNSANDBOXED
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


class SandboxUnavailable(RuntimeError):
    """This worker cannot confine untrusted code; the message says how to fix it."""


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
    hidden: tuple[str, ...] = ()  # package data folders covered by an empty folder in the sandbox

    @property
    def sandboxed(self) -> bool:
        return self.bwrap is not None

    def describe(self) -> str:
        if not self.sandboxed:
            return "UNSANDBOXED (development only): " + self.cgroups.note
        who = f"uid {self.switch_to[0]}" if self.switch_to else f"the worker's uid {os.getuid()}"
        return f"bubblewrap {self.bwrap} as {who}; {self.cgroups.note}"


VENV_INSIDE = "/opt/venv"
# Data that ships with an installed package but must not be seen in the sandbox: held-out labels
# never enter it (docs/security.md, invariant 3), and scikit-learn ships the digits data set,
# labels included, which several labs split into a training and a held-out part. Relative to
# site-packages; each is covered by an empty read-only folder.
HIDDEN_PACKAGE_DATA = ("sklearn/datasets/data", "sklearn/datasets/images", "sklearn/datasets/descr")


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


def _hidden_data() -> tuple[str, ...]:
    """Where the sandbox sees ``HIDDEN_PACKAGE_DATA`` (those folders that exist on this worker)."""
    site = sysconfig.get_paths()["purelib"]
    found = []
    for relative in HIDDEN_PACKAGE_DATA:
        host = os.path.join(site, relative)
        if os.path.isdir(host):
            inside = VENV_INSIDE + host[len(sys.prefix) :] if host.startswith(sys.prefix + "/") else host
            found.append(inside if sys.prefix != sys.base_prefix else host)
    return tuple(found)


@cache
def config() -> Config:
    """This worker's sandbox, checked once per process by really starting one."""
    try:
        wanted = settings.current()
    except settings.SettingsError as exc:
        raise SandboxUnavailable(f"the worker's settings are wrong: {exc}") from None
    ids = (wanted.sandbox_uid, wanted.sandbox_gid)
    switch_to = ids if os.geteuid() == 0 else None
    found_cgroups = cgroups.detect_cgroups()
    bwrap = shutil.which(wanted.bwrap)
    if bwrap is None:
        if wanted.allow_unsandboxed:
            log.warning("%s=1 and no bubblewrap: submissions will run UNSANDBOXED. %s", ALLOW_UNSANDBOXED, INSTALL_HINT)
            return Config(None, switch_to, ids, found_cgroups, (), sys.executable)
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed, so this worker refuses to run untrusted code. " + INSTALL_HINT
        )
    found = Config(bwrap, switch_to, ids, found_cgroups, *_python(), hidden=_hidden_data())
    _probe(found)
    return found


def _probe(found: Config) -> None:
    """Start one real sandbox running this Python, so a broken set-up fails here with bwrap's own words.

    Python only, no torch (about 40 ms instead of a second on every grading process's first job):
    a torch that the sandbox cannot load shows in the first job's output instead.
    """
    folder = create_job_folder("probe", config=found, disk_mb=1)
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


def create_job_folder(job_id: object, *, config: Config, disk_mb: int) -> JobFolder:
    """A job folder for this worker's sandbox, with the /etc files the sandbox mounts."""
    folder = JobFolder.create(job_id, sandboxed=config.sandboxed, owner=config.switch_to, disk_mb=disk_mb)
    if config.sandboxed:
        _write_etc_files(folder, config.inside_ids)
    return folder


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


def sweep_stale(cfg: Config) -> int:
    """Remove job folders and cgroups left by worker processes that were killed mid-job.

    Only those whose creating process (the pid in the name) is gone, so jobs of other workers on
    the same host are left alone. Returns how many were removed.
    """
    removed = 0
    places = [Path(tempfile.gettempdir()), *cfg.cgroups.parents]
    for place in places:
        for path in place.glob("*aisys-job-*-p*-*"):
            pid = _creator_pid(path.name)
            if pid is None or _alive(pid):
                continue
            if place == places[0]:
                JobFolder(path, sandboxed=True, mounted=os.path.ismount(path / "box"), disk_mb=0).remove()
            else:
                frozen = path if place == cfg.cgroups.freezer_parent else None  # thawed first, then killed
                JobCgroup(cfg.cgroups.version, path, path, frozen).destroy()
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


# ------------------------------------------------------------------------------------------------
# one sandboxed process
# ------------------------------------------------------------------------------------------------


def bwrap_argv(cfg: Config, folder: JobFolder, command: list[str], *, gpus: tuple[int, ...]) -> list[str]:
    """The bwrap command line that runs ``command`` in the sandbox for ``folder``."""
    return [cfg.bwrap, *bwrap_options(cfg, folder, gpus=gpus), "--", *command]


def bwrap_options(cfg: Config, folder: JobFolder, *, gpus: tuple[int, ...]) -> list[str]:
    """bwrap's options for the sandbox of ``folder``: everything between ``bwrap`` and ``--``."""
    uid, gid = cfg.inside_ids
    argv = [
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
    for inside in cfg.hidden:
        argv += ["--tmpfs", inside, "--remount-ro", inside]
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
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", JOB_DIR]
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
    if settings.current().gpu is not None:
        return (settings.current().gpu,)
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
    # A rank of a distributed job: its place in the group's network (gpu_runner.netns), instead of
    # a network namespace with only lo, and the rank seccomp filter (gpu_runner.seccomp).
    network: Seat | None = None

    def __post_init__(self) -> None:
        cgroups.retry_leftovers()  # what an earlier job's unkillable process kept
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

    def seccomp_filter(self) -> bytes | None:
        """The compiled seccomp program this sandbox's process runs under, if any (a rank's)."""
        return seccomp.rank_filter() if self.network is not None and self.cfg.sandboxed else None

    def argv(
        self, command: list[str], *, options_fd: int | None = None, seccomp_fd: int | None = None
    ) -> tuple[list[str], bytes]:
        """The command line that starts ``command`` in this sandbox, and the bytes to feed ``options_fd``.

        With ``options_fd``, bwrap reads its options as NUL-separated text from that descriptor
        (``--args``): they name host paths (the job folder, the worker's Python), and bwrap's
        command line is what the job sees as its pid 1's ``/proc/1/cmdline``. ``seccomp_fd`` carries
        ``seccomp_filter()``.
        """
        if not self.cfg.sandboxed:
            return command, b""
        options = bwrap_options(self.cfg, self.folder, gpus=self.gpus)
        if self.network is not None:
            options[options.index("--unshare-all") + 1 : options.index("--unshare-all") + 1] = ["--share-net"]
            if seccomp_fd is None:
                raise ValueError("a rank's sandbox needs its seccomp filter")
            options += ["--seccomp", str(seccomp_fd)]
        if options_fd is None:
            return [self.cfg.bwrap, *options, "--", *command], b""
        return [self.cfg.bwrap, "--args", str(options_fd), "--", *command], b"".join(
            o.encode() + b"\0" for o in options
        )

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
        if self.network is not None:
            self.network.join()  # as root (or the namespace's owner), before giving that up
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

    def freeze(self) -> bool:
        """Stop the job's processes (False where this worker has no freezer); ``thaw`` resumes them."""
        return self.cgroup is not None and self.cgroup.freeze()

    def thaw(self) -> bool:
        return self.cgroup is not None and self.cgroup.thaw()

    def release(self) -> None:
        """Kill what is left of the job and remove its cgroups; safe to call more than once."""
        if self.cgroup is not None:
            cgroup, self.cgroup = self.cgroup, None
            cgroup.destroy()

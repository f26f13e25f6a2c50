"""One job's files on the worker's disk, and the only code that touches them.

``box`` is what the sandbox sees as ``/job``: the submission's files, the cases, the outputs. It
belongs to the submission, whose process can put anything there (links, fifos, a directory chain
thousands deep, files with no permissions), so the worker reads and writes it only through
``JobFolder``: never following a link, opening nothing but regular files, bounded in size, and
removing it without recursion. ``runner`` is read-only to the job (the harness, the lab's
``run.py``, the libraries they import).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
import subprocess
import tempfile
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

JOB_DIR = "/job"  # the box, as a sandboxed job sees it
RUNNER_DIR = "/opt/aisys"  # the runner folder, as a sandboxed job sees it


class UnsafeFile(Exception):
    """A file the submission left in the job folder is not one the worker will read."""


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
    def create(cls, job_id: object, *, sandboxed: bool, owner: tuple[int, int] | None, disk_mb: int) -> JobFolder:
        """A new folder for job ``job_id``; ``owner`` is the uid and gid a root worker's job runs as."""
        safe_id = "".join(c for c in str(job_id) if c.isalnum())[:32]
        # The creating process's pid in the name lets a restarted worker sweep up what a killed one left.
        root = Path(tempfile.mkdtemp(prefix=f"aisys-job-{safe_id}-p{os.getpid()}-"))
        root.chmod(0o711)  # the sandbox uid may pass through to box/ and runner/, not list
        box, runner = root / "box", root / "runner"
        box.mkdir(mode=0o700)
        runner.mkdir(mode=0o755)
        mounted = False
        if sandboxed and os.geteuid() == 0:
            mounted = _mount_tmpfs(box, size_mb=disk_mb, owner=owner)
        if owner:
            os.chown(box, *owner)
        return cls(root, sandboxed=sandboxed, mounted=mounted, disk_mb=disk_mb, owner=owner)

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
        remove_tree(self.root)


def remove_tree(root: Path) -> bool:
    """Delete ``root`` and everything in it; True when it is gone.

    The job made the tree, so neither its depth nor its modes can be trusted: ``shutil.rmtree``
    recurses once per level (an 1,800-deep chain raised RecursionError in the worker) and paths
    that deep pass PATH_MAX. Here every directory met is first moved up to be a direct child of
    ``root``, so nothing is ever more than two levels down, and made writable before it is emptied.
    No link is followed: links are unlinked like files.
    """
    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.warning("cannot remove %s: %s", root, exc)
        return False
    flattened = 0
    try:
        while True:
            progress = False
            for entry in list(os.scandir(top)):
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        os.unlink(entry.name, dir_fd=top)
                        progress = True
                        continue
                    fd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
                    try:
                        os.fchmod(fd, 0o700)
                        for child in list(os.scandir(fd)):
                            if child.is_dir(follow_symlinks=False):
                                flattened += 1
                                os.rename(child.name, f"~{flattened}", src_dir_fd=fd, dst_dir_fd=top)
                            else:
                                os.unlink(child.name, dir_fd=fd)
                    finally:
                        os.close(fd)
                    os.rmdir(entry.name, dir_fd=top)
                    progress = True
                except FileNotFoundError:
                    progress = True
                except OSError as exc:
                    log.debug("removing %s/%s: %s", root, entry.name, exc)
            if not progress:
                break
    finally:
        os.close(top)
    try:
        os.rmdir(root)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", root, exc)
        return False
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

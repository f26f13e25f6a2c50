"""A private network namespace that the ranks of one distributed job share, and its byte meter.

Each rank of a distributed case runs in its own sandbox (``gpu_runner.rankgroup``): its own
files, ``/tmp``, ``/dev/shm``, IPC and pid namespaces, so the ranks cannot pass data through
memory or files. They still have to talk to each other, over gloo's TCP, so their sandboxes join
one network namespace made here, holding nothing but a loopback interface. Every byte one rank
sends another crosses that ``lo``, whose kernel counters the worker reads from outside
(``/proc/<holder>/net/dev``): that count is trusted, the sandbox cannot reset or fake it.

The namespace lives as long as a small holder process (``python -c HOLDER``) that made it and
then waits for its stdin to close. A root worker makes a plain network namespace, owned by the
host's user namespace, so nothing in the sandboxes has any capability over it (they cannot
change ``lo`` or reset its counters). A non-root worker makes a user namespace with it, and the
ranks' sandboxes enter both (``join``) before bwrap starts.

Trusted code, in the worker.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

# Run by the holder: make the namespace, bring lo up, say so, then wait until the worker closes
# stdin (or dies: PR_SET_PDEATHSIG). Only the standard library; -I -S keep it quick.
HOLDER = r"""
import ctypes, fcntl, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: gone with the worker
user = sys.argv[1] == "user"
uid, gid = os.getuid(), os.getgid()
if libc.unshare(0x40000000 | (0x10000000 if user else 0)) != 0:
    sys.exit("unshare: " + os.strerror(ctypes.get_errno()))
if user:
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    request = struct.pack("16sH14x", b"lo", 0)
    flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, request))[1]  # SIOCGIFFLAGS
    fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1 | 0x40))  # SIOCSIFFLAGS: UP, RUNNING
print("ready", flush=True)
sys.stdin.read()
"""


class NetnsUnavailable(RuntimeError):
    """The worker could not make a private network namespace; the message says why."""


@dataclass
class LoopbackNetwork:
    """One private network namespace with only ``lo``, held open until ``close``."""

    holder: subprocess.Popen
    user: bool  # whether it comes with its own user namespace (a non-root worker)
    net_fd: int
    user_fd: int | None

    @classmethod
    def create(cls) -> LoopbackNetwork:
        user = os.geteuid() != 0
        holder = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", HOLDER, "user" if user else "root"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        line = holder.stdout.readline()
        if line.strip() != b"ready":
            holder.kill()
            error = holder.communicate()[1].decode(errors="replace").strip()[-400:]
            raise NetnsUnavailable(f"the ranks' private network could not be made: {error or 'no answer'}")
        try:
            net_fd = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            user_fd = os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC) if user else None
        except OSError as exc:
            holder.kill()
            holder.wait()
            raise NetnsUnavailable(f"the ranks' private network could not be opened: {exc}") from None
        return cls(holder=holder, user=user, net_fd=net_fd, user_fd=user_fd)

    def join(self) -> None:
        """Enter the namespace (between fork and exec of a rank's bwrap, before dropping root)."""
        libc = ctypes.CDLL(None, use_errno=True)
        if self.user_fd is not None and libc.setns(self.user_fd, CLONE_NEWUSER) != 0:
            raise OSError(ctypes.get_errno(), "setns(user) for the ranks' network")
        if libc.setns(self.net_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns(net) for the ranks' network")

    def sent_bytes(self) -> int:
        """Bytes sent over the namespace's ``lo`` so far (what one rank sends another, with the
        TCP/IP headers and acknowledgements), read from the kernel, outside every sandbox."""
        with open(f"/proc/{self.holder.pid}/net/dev", encoding="ascii") as f:
            for line in f:
                name, _, counters = line.partition(":")
                if name.strip() == "lo":
                    return int(counters.split()[8])  # receive: 8 fields, then transmit bytes
        raise NetnsUnavailable("the ranks' network has no lo")

    def close(self) -> None:
        for fd in (self.net_fd, self.user_fd):
            if fd is not None:
                os.close(fd)
        self.net_fd, self.user_fd = -1, None
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()
        for stream in (self.holder.stdin, self.holder.stdout, self.holder.stderr):
            stream.close()

"""The private network of one distributed job's ranks: a namespace per rank, and the byte meter.

Each rank of a distributed case runs in its own sandbox (``gpu_runner.rankgroup``): its own files,
``/tmp``, ``/dev/shm``, IPC and pid namespaces, so the ranks cannot pass data through memory or
files. They have to talk over gloo's TCP, and nothing else: each rank also has a network namespace
of its own (its own port table, its own abstract Unix sockets, its own ``/proc/net``), holding
``lo`` and one end of a veth pair, ``eth0`` with address ``10.77.<rank>.2``. The other ends sit in
a hub namespace that routes between them, and nowhere else. Every byte a rank sends a peer leaves
through its ``eth0``, whose kernel counters the worker reads from outside
(``/proc/<holder>/net/dev``): that count is trusted, per rank, and the sandbox can neither reset
nor fake it. IPv6 is off on these interfaces, so the count holds only what the ranks sent
(and ARP's few dozen bytes).

Each namespace lives as long as a small holder process (``python -c HOLDER``) that made it and then
waits for its stdin to close. A root worker makes plain network namespaces, owned by the host's
user namespace, so nothing in the sandboxes has any capability over them (they cannot change an
interface or reset its counters). A non-root worker makes the hub inside a user namespace of its
own and every rank's namespace in that user namespace; a rank's sandbox enters both (``join``)
before bwrap starts. The veths, addresses and routes are set with iproute2 (``ip -batch``) run in
the namespaces with util-linux's ``nsenter``, about 0.1 s for four ranks.

Trusted code, in the worker.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
SUBNET = "10.77"  # rank r: 10.77.r.2 on its eth0; the hub: 10.77.r.1
MAX_RANKS = 250
MTU = 65535  # the most a veth takes: headers and acknowledgements weigh about what they do on lo

# Run by a holder: make the namespace ("root": a network namespace; "user": a user namespace with
# one; "join:<pid>": a network namespace in <pid>'s user namespace), turn IPv6 off (its
# autoconfiguration would send packets of its own), let the hub forward, say so, then wait until the
# worker closes stdin (or dies: PR_SET_PDEATHSIG). Only the standard library; -I -S keep it quick.
HOLDER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: gone with the worker
mode, role = sys.argv[1], sys.argv[2]
uid, gid = os.getuid(), os.getgid()
flags = 0x40000000
if mode.startswith("join:"):
    fd = os.open(f"/proc/{mode[5:]}/ns/user", os.O_RDONLY)
    if libc.setns(fd, 0x10000000) != 0:
        sys.exit("setns: " + os.strerror(ctypes.get_errno()))
elif mode == "user":
    flags |= 0x10000000
if libc.unshare(flags) != 0:
    sys.exit("unshare: " + os.strerror(ctypes.get_errno()))
if mode == "user":
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
settings = [("ipv6/conf/default/disable_ipv6", "1"), ("ipv6/conf/all/disable_ipv6", "1")]
if role == "hub":
    settings.append(("ipv4/ip_forward", "1"))
for path, value in settings:
    with open(f"/proc/sys/net/{path}", "w") as f:
        f.write(value)
print("ready", flush=True)
sys.stdin.read()
"""


class NetnsUnavailable(RuntimeError):
    """The worker could not make the ranks' network; the message says why."""


def _holder(mode: str, role: str) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", HOLDER, mode, role],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    if holder.stdout.readline().strip() != b"ready":
        holder.kill()
        error = holder.communicate()[1].decode(errors="replace").strip()[-400:]
        _close(holder)
        raise NetnsUnavailable(f"the ranks' network could not be made: {error or 'no answer'}")
    return holder


def _close(holder: subprocess.Popen) -> None:
    if holder.poll() is None:
        holder.kill()
    holder.wait()
    for stream in (holder.stdin, holder.stdout, holder.stderr):
        if stream is not None:
            stream.close()


@dataclass
class RankNetwork:
    """A hub namespace and one namespace per rank, joined by veth pairs; held until ``close``."""

    world_size: int
    hub: subprocess.Popen | None = None
    ranks: list[subprocess.Popen] = field(default_factory=list)
    user: bool = False  # in a user namespace of their own (a non-root worker)
    fds: dict[str, int] = field(default_factory=dict)  # "user", "net<r>": namespace descriptors

    @classmethod
    def create(cls, world_size: int) -> RankNetwork:
        if not 1 <= world_size <= MAX_RANKS:
            raise NetnsUnavailable(f"a network of {world_size} ranks")
        missing = [tool for tool in ("ip", "nsenter") if shutil.which(tool) is None]
        if missing:
            raise NetnsUnavailable(
                f"{' and '.join(missing)} not found: distributed labs need iproute2 and util-linux on the "
                "grading worker (Debian/Ubuntu: apt-get install iproute2 util-linux)"
            )
        network = cls(world_size=world_size, user=os.geteuid() != 0)
        try:
            network.hub = _holder("user" if network.user else "root", "hub")
            for _ in range(world_size):
                network.ranks.append(_holder(f"join:{network.hub.pid}" if network.user else "root", "rank"))
            hub_batch = "".join(
                f"link add h{r} mtu {MTU} type veth peer name eth0 mtu {MTU} netns {holder.pid}\n"
                f"addr add {SUBNET}.{r}.1/24 dev h{r}\nlink set h{r} up\n"
                for r, holder in enumerate(network.ranks)
            )
            network._ip(network.hub.pid, hub_batch)
            for r, holder in enumerate(network.ranks):
                network._ip(
                    holder.pid,
                    f"addr add {SUBNET}.{r}.2/24 dev eth0\nlink set eth0 up\nlink set lo up\n"
                    f"route add default via {SUBNET}.{r}.1\n",
                )
            if network.user:
                network.fds["user"] = os.open(f"/proc/{network.hub.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            for r, holder in enumerate(network.ranks):
                network.fds[f"net{r}"] = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            network.close()
            raise
        return network

    def _ip(self, pid: int, batch: str) -> None:
        command = ["nsenter", f"--net=/proc/{pid}/ns/net"]
        if self.user:
            command += [f"--user=/proc/{self.hub.pid}/ns/user", "--preserve-credentials"]
        done = subprocess.run([*command, "ip", "-batch", "-"], input=batch, text=True, capture_output=True, timeout=30)
        if done.returncode != 0:
            raise NetnsUnavailable(f"the ranks' network could not be set up: {done.stderr.strip()[-400:]}")

    @staticmethod
    def address(rank: int) -> str:
        """Rank ``rank``'s address, as its peers reach it."""
        return f"{SUBNET}.{rank}.2"

    def seat(self, rank: int) -> Seat:
        return Seat(self, rank)

    def join(self, rank: int) -> None:
        """Enter rank ``rank``'s namespace (between fork and exec of its bwrap, before dropping root)."""
        libc = ctypes.CDLL(None, use_errno=True)
        if "user" in self.fds and libc.setns(self.fds["user"], CLONE_NEWUSER) != 0:
            raise OSError(ctypes.get_errno(), "setns(user) for the ranks' network")
        if libc.setns(self.fds[f"net{rank}"], CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns(net) for the ranks' network")

    def sent_bytes(self) -> list[int]:
        """The bytes each rank has sent so far (headers and acknowledgements included), read from the
        kernel's counters of its ``eth0``, outside every sandbox."""
        return [_transmitted(holder.pid) for holder in self.ranks]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        for holder in [*self.ranks, *([self.hub] if self.hub else [])]:
            _close(holder)
        self.ranks, self.hub = [], None


@dataclass(frozen=True)
class Seat:
    """One rank's place in a ``RankNetwork``: what its sandbox joins."""

    network: RankNetwork
    rank: int

    def join(self) -> None:
        self.network.join(self.rank)


def _transmitted(pid: int) -> int:
    with open(f"/proc/{pid}/net/dev", encoding="ascii") as f:
        for line in f:
            name, _, counters = line.partition(":")
            if name.strip() == "eth0":
                return int(counters.split()[8])  # receive: 8 fields, then transmit bytes
    raise NetnsUnavailable("a rank's network has no eth0")

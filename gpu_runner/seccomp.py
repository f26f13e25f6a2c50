"""The seccomp filter of a rank's sandbox: no socket the worker's byte meter would not see.

Each rank of a distributed job has a network namespace of its own (``gpu_runner.netns``), so its
abstract Unix sockets, netlink sockets and port table are its own already. The filter is the
second wall: it refuses ``socket(AF_UNIX, ...)`` (``socketpair``, which connects a process only
with itself, stays allowed), every netlink family but ``NETLINK_ROUTE`` (which gloo needs to list
interfaces), and io_uring (whose operations a seccomp filter never sees), so that a rank's only way
to another process is a socket over its ``eth0``, where every byte is counted. A refused call fails
with ``EAFNOSUPPORT`` or ``ENOSYS``; everything else is allowed.

The program is classic BPF, built here without libseccomp, and handed to bwrap (``--seccomp``),
which installs it just before it runs the harness. x86-64 and aarch64; a call made through
another ABI (32-bit x86 on a 64-bit kernel, x32) is refused outright.

Trusted code, in the worker.
"""

from __future__ import annotations

import errno
import platform
import struct

# linux/filter.h, linux/seccomp.h, linux/audit.h
LD_W_ABS = 0x20
JEQ_K = 0x15
JGE_K = 0x35
RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
OFFSET_NR, OFFSET_ARCH, OFFSET_ARGS = 0, 4, 16  # struct seccomp_data
AF_UNIX, AF_NETLINK, NETLINK_ROUTE = 1, 16, 0
X32_BIT = 0x40000000

# (audit arch, socket, io_uring_setup, io_uring_enter, io_uring_register)
ARCHES = {
    "x86_64": (0xC000003E, 41, 425, 426, 427),
    "aarch64": (0xC00000B7, 198, 425, 426, 427),
}


class SeccompUnavailable(RuntimeError):
    """No filter for this machine's architecture."""


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def rank_filter(machine: str | None = None) -> bytes:
    """The compiled filter for a rank's sandbox on ``machine`` (default: this one)."""
    machine = machine or platform.machine()
    if machine not in ARCHES:
        raise SeccompUnavailable(f"no seccomp filter for {machine}; distributed labs need x86_64 or aarch64")
    arch, nr_socket, *io_uring = ARCHES[machine]
    refuse_family = RET_ERRNO | errno.EAFNOSUPPORT
    refuse_call = RET_ERRNO | errno.ENOSYS
    program = [
        _insn(LD_W_ABS, OFFSET_ARCH),  # 0
        _insn(JEQ_K, arch, jt=1, jf=0),  # 1: another ABI -> 2
        _insn(RET_K, refuse_call),  # 2
        _insn(LD_W_ABS, OFFSET_NR),  # 3
        _insn(JGE_K, X32_BIT, jt=0, jf=1),  # 4: x32 -> 5
        _insn(RET_K, refuse_call),  # 5
        _insn(JEQ_K, nr_socket, jt=5, jf=0),  # 6: socket -> 12
        _insn(JEQ_K, io_uring[0], jt=3, jf=0),  # 7 -> 11
        _insn(JEQ_K, io_uring[1], jt=2, jf=0),  # 8 -> 11
        _insn(JEQ_K, io_uring[2], jt=1, jf=0),  # 9 -> 11
        _insn(RET_K, RET_ALLOW),  # 10
        _insn(RET_K, refuse_call),  # 11
        _insn(LD_W_ABS, OFFSET_ARGS),  # 12: the family (the low half of the first argument)
        _insn(JEQ_K, AF_UNIX, jt=4, jf=0),  # 13 -> 18
        _insn(JEQ_K, AF_NETLINK, jt=0, jf=2),  # 14: netlink -> 15, else -> 17
        _insn(LD_W_ABS, OFFSET_ARGS + 16),  # 15: the protocol (third argument)
        _insn(JEQ_K, NETLINK_ROUTE, jt=0, jf=1),  # 16: route -> 17, else -> 18
        _insn(RET_K, RET_ALLOW),  # 17
        _insn(RET_K, refuse_family),  # 18
    ]
    return b"".join(program)

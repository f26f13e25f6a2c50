"""Run a function on several ranks of a gloo process group, inside one job, and fail cleanly.

Distributed labs call this from their ``run`` inside the sandbox (the runner ships it to
``/opt/aisys/lib/labs/ranks.py``, so ``from labs import ranks`` works there as it does here). It
imports only the standard library and torch.

Each rank is a forked child of the calling process: it inherits the student's imported module
and the harness's patches of the forbidden collectives, joins a gloo group over loopback (the
sandbox has its own network namespace, with only ``lo``), calls ``fn(rank, world_size, *args)``
and sends back what it returned, serialised with ``torch.save``. The parent waits for every rank
up to a deadline. A rank that raises, dies or hangs ends the whole group: the others are killed
(they would otherwise wait forever on their peer), every child is reaped, and :class:`RankFailed`
says which rank did what. Nothing is left running.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import signal
import socket
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import wait

import torch
import torch.distributed as dist

# How long the other ranks may keep running after one has failed, to finish reporting their own
# error (often the more useful one: "connection closed by peer" is not).
GRACE_SECONDS = 0.5
# How gloo reports that the rank at the other end went away: a consequence, never the cause.
PEER_LOSS = re.compile(r"Connection (closed|reset) by peer|stopped after another rank failed")


class RankFailed(RuntimeError):
    """A rank raised, died or did not finish in time; the message names the rank and the cause."""

    def __init__(self, message: str, *, failures: dict[int, str]):
        super().__init__(message)
        self.failures = failures


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(fn, world_size: int, *, args: tuple = (), timeout: float = 30.0, collective_timeout: float | None = None):
    """``[fn(0, world_size, *args), ..., fn(world_size - 1, ...)]``, each run on its own rank.

    ``timeout`` bounds the whole group (seconds of wall time, process start included);
    ``collective_timeout`` (default: ``timeout``) is gloo's own timeout for one operation.
    Return values must be plain data (tensors, numbers, strings, lists, tuples, dicts).
    """
    if world_size < 1:
        raise ValueError("world_size must be at least 1")
    port = free_port()
    context = multiprocessing.get_context("fork")  # the children inherit the imported submission
    children, readers = [], {}
    for rank in range(world_size):
        reader, writer = context.Pipe(duplex=False)
        child = context.Process(
            target=_rank_main,
            args=(fn, rank, world_size, port, args, collective_timeout or timeout, writer),
            daemon=True,
        )
        child.start()
        writer.close()
        children.append(child)
        readers[reader] = rank
    results: dict[int, object] = {}
    failures: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    try:
        _collect(children, readers, results, failures, deadline)
    finally:
        for child in children:
            if child.is_alive():
                os.kill(child.pid, signal.SIGKILL)
        for child in children:
            child.join()
        for reader in readers:
            reader.close()
    if failures:
        # The root cause, not a peer's complaint that the failed rank's connection closed.
        causes = [r for r in sorted(failures) if not _is_peer_loss(failures[r])] or sorted(failures)
        first = causes[0]
        others = "; ".join(f"rank {r}: {_headline(failures[r])}" for r in sorted(failures) if r != first)
        message = f"rank {first} of {world_size}: {failures[first]}"
        if others:
            message += f"\n(also {others})"
        raise RankFailed(message, failures=failures)
    return [results[rank] for rank in range(world_size)]


def _collect(children, readers, results, failures, deadline) -> None:
    pending = dict(readers)
    failed_at = None
    while pending:
        now = time.monotonic()
        limit = deadline if failed_at is None else min(deadline, failed_at + GRACE_SECONDS)
        if now >= limit:
            break
        for reader in wait(list(pending), timeout=limit - now):
            rank = pending.pop(reader)
            try:
                status, payload = _receive(reader)
            except (EOFError, OSError):
                children[rank].join(1.0)
                status, payload = "error", _death(children[rank])
            except Exception as exc:  # noqa: BLE001 - a function, a class instance: not plain data
                status = "error"
                payload = (
                    "returned data that cannot be sent back (use plain tensors, numbers, strings, lists, dicts): "
                    + str(exc).splitlines()[0][:300]
                )
            if status == "ok":
                results[rank] = payload
            else:
                failures[rank] = payload
                failed_at = failed_at or time.monotonic()
    if not pending:
        return
    if failed_at is None:  # nobody failed: whoever is left ran past the deadline
        for rank in pending.values():
            failures[rank] = (
                "did not finish in time (a hang? e.g. a recv with no matching send, or ranks calling "
                "collectives in different orders)"
            )
    else:
        for rank in pending.values():
            failures.setdefault(rank, "stopped after another rank failed")


def _is_peer_loss(failure: str) -> bool:
    return bool(PEER_LOSS.search(failure.splitlines()[0] if failure else ""))


def _headline(failure: str) -> str:
    return "lost its connection to a failed rank" if _is_peer_loss(failure) else failure.splitlines()[0]


def _receive(reader):
    data = reader.recv_bytes()
    status, payload = torch.load(io.BytesIO(data), weights_only=True)
    return status, payload


def _death(child) -> str:
    code = child.exitcode
    if code is None:
        return "closed its result channel without a result"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code} without returning"


def _rank_main(fn, rank, world_size, port, args, collective_timeout, writer) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        GLOO_SOCKET_IFNAME="lo",  # the sandbox's hostname need not resolve; loopback always exists
    )
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=collective_timeout))
        try:
            outcome = ("ok", fn(rank, world_size, *args))
        finally:
            dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as this rank's failure
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        outcome = ("error", f"raised {type(exc).__name__}: {exc}\n{_tail(trace)}")
    buffer = io.BytesIO()
    try:
        torch.save(outcome, buffer)
    except Exception as exc:  # noqa: BLE001 - fn returned something that is not plain data
        buffer = io.BytesIO()
        torch.save(("error", f"returned data that cannot be sent back: {exc}"), buffer)
    try:
        writer.send_bytes(buffer.getvalue())
        writer.close()
    finally:
        os._exit(0)  # a forked child must not run the parent's exit handlers


def _tail(trace: str, lines: int = 8) -> str:
    kept = [line for line in trace.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])

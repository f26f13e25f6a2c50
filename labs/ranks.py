"""Run a function on several ranks of a gloo process group, inside one job, and fail cleanly.

Distributed labs call ``spawn`` from their ``run`` inside the sandbox (the runner ships it to
``/opt/aisys/lib/labs/ranks.py``, so ``from labs import ranks`` works there as it does here). It
imports only the standard library and torch.

Each rank is a forked child of the calling process: it inherits the student's imported module
and the harness's patches of the forbidden collectives, joins a gloo group over loopback (the
sandbox has its own network namespace, with only ``lo``), calls ``fn(rank, world_size, *args)``
and sends back what it returned, serialised with ``torch.save``. The parent waits for every rank
up to a deadline. A rank that raises, dies or hangs ends the whole group: the others are killed
(they would otherwise wait forever on their peer), every child is reaped, and :class:`RankFailed`
says which rank did what. Nothing is left running. A :class:`Pool` keeps its ranks for many calls
(the timing phase of a distributed lab); ``spawn`` is a pool asked once.
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
    deadline = time.monotonic() + timeout
    with Pool(
        world_size, lambda rank, size, _: fn(rank, size, *args), collective_timeout=collective_timeout or timeout
    ) as pool:
        return pool.ask(None, timeout=max(0.0, deadline - time.monotonic()))


class Pool:
    """``world_size`` ranks forked once, joined in one gloo group, each answering the parent's
    messages with ``serve(rank, world_size, message)`` until the pool is closed.

    The ranks are forked when the pool is made, so they inherit what the parent had imported
    (the submission, the harness's patches). ``ask`` sends one message to every rank and returns
    their replies in rank order; a rank that raises, dies or does not answer in time fails the whole
    pool with :class:`RankFailed` naming the root cause, and the pool is closed: every child is
    killed and reaped. The timing phase uses a pool for timed calls of distributed labs, so the
    ranks start and join their group once, not once per call.
    """

    def __init__(self, world_size: int, serve, *, collective_timeout: float = 60.0):
        if world_size < 1:
            raise ValueError("world_size must be at least 1")
        self.world_size = world_size
        port = free_port()
        context = multiprocessing.get_context("fork")  # the children inherit the imported submission
        self.children, self.conns = [], []
        for rank in range(world_size):
            parent_end, child_end = context.Pipe(duplex=True)
            child = context.Process(
                target=_rank_loop,
                args=(serve, rank, world_size, port, collective_timeout, child_end),
                daemon=True,
            )
            child.start()
            child_end.close()
            self.children.append(child)
            self.conns.append(parent_end)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ask(self, message, *, timeout: float) -> list:
        """Every rank's ``serve(rank, world_size, message)``, in rank order."""
        if not self.conns:
            raise RankFailed("the ranks are gone (an earlier call failed)", failures={})
        data = _serialize(message)
        for conn in self.conns:
            try:
                conn.send_bytes(data)
            except OSError:
                pass  # that rank is dead: _collect says how
        readers = {conn: rank for rank, conn in enumerate(self.conns)}
        results: dict[int, object] = {}
        failures: dict[int, str] = {}
        _collect(self.children, readers, results, failures, time.monotonic() + timeout)
        if failures:
            self.close()
            raise _group_failure(failures, self.world_size)
        return [results[rank] for rank in range(self.world_size)]

    def close(self) -> None:
        for child in self.children:
            if child.is_alive():
                os.kill(child.pid, signal.SIGKILL)
        for child in self.children:
            child.join()
        for conn in self.conns:
            conn.close()
        self.children, self.conns = [], []


def _group_failure(failures: dict[int, str], world_size: int) -> RankFailed:
    # The root cause, not a peer's complaint that the failed rank's connection closed.
    causes = [r for r in sorted(failures) if not _is_peer_loss(failures[r])] or sorted(failures)
    first = causes[0]
    others = "; ".join(f"rank {r}: {_headline(failures[r])}" for r in sorted(failures) if r != first)
    message = f"rank {first} of {world_size}: {failures[first]}"
    if others:
        message += f"\n(also {others})"
    return RankFailed(message, failures=failures)


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


def _serialize(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


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


def _rank_loop(serve, rank, world_size, port, collective_timeout, conn) -> None:
    """A rank: join the group, then answer the parent's messages until it closes the pipe."""
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
            while True:
                try:
                    message = torch.load(io.BytesIO(conn.recv_bytes()), weights_only=True)
                except (EOFError, OSError):
                    break
                try:
                    outcome = ("ok", serve(rank, world_size, message))
                except BaseException as exc:  # noqa: BLE001 - reported to the parent as this rank's failure
                    outcome = ("error", _failure(exc))
                _reply(conn, outcome)
        finally:
            dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - joining the group failed
        _reply(conn, ("error", _failure(exc)))
    finally:
        os._exit(0)  # a forked child must not run the parent's exit handlers


def _failure(exc: BaseException) -> str:
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"raised {type(exc).__name__}: {exc}\n{_tail(trace)}"


def _reply(conn, outcome) -> None:
    try:
        data = _serialize(outcome)
    except Exception as exc:  # noqa: BLE001 - serve returned something that is not plain data
        data = _serialize(("error", f"returned data that cannot be sent back: {exc}"))
    try:
        conn.send_bytes(data)
    except OSError:
        pass


def _tail(trace: str, lines: int = 8) -> str:
    kept = [line for line in trace.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])

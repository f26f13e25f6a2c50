"""The ranks of a distributed case: one sandbox per rank, on a private network the worker meters.

A case with ``"world_size": n`` (docs/authoring-labs.md, "Distributed labs") does not run in the
job's one process. The worker starts ``n`` harness processes, each in a sandbox of its own (its
own files, ``/tmp``, ``/dev/shm``, IPC and pid namespaces, its own cgroup and limits) and in a
network namespace of its own, joined to its peers' only through a private router
(``gpu_runner.netns``), under a seccomp filter that refuses every socket but the network's
(``gpu_runner.seccomp``). Every byte one rank passes another leaves through its ``eth0`` and is
counted by the kernel, read by the worker per rank (``network_bytes``, ``network_bytes_by_rank``);
nothing in a rank can reset that count, reach a peer's memory or files, or see a peer's sockets.

One group of processes serves all of a job's distributed cases, as many as the largest case
needs (each process imports torch: starting them is most of a distributed case's cost). Before a
case of ``n`` ranks the worker has the group re-form its gloo process group on ranks ``0..n-1``
(``Group.join``); the others leave it and are frozen ("parked") until a case needs them, so they
can neither work for their peers nor take the machine from them. Each rank gets only its own
inputs (a case's ``inputs`` may be a list, one dict per rank) and runs the case the worker names
when the worker names it, so all ranks are in the same case. A rank that raises fails that case
and the group re-forms before the next; a rank that dies or hangs fails it with the root cause (not
a peer's "connection closed"), and the group is replaced by a fresh one for the next case, or,
after a hang, the remaining distributed cases are not run. The grader's ``check`` gets the list of
the ranks' outputs and ``case["runtime"]["network_bytes"]``. When every case passed, the same
processes run the student's side of a distributed timed case (``take_for_timing``).

``Group`` is also what the timing phase runs its other processes in (``gpu_runner.timing``): the
reference's ranks, and a single-process group of one, without a network of its own, for a plain
lab.

Trusted code, in the worker.
"""

from __future__ import annotations

import io
import re
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gpu_runner import launcher, sandbox
from gpu_runner.jobfolder import JobFolder
from gpu_runner.jobsetup import describe_error, harness_command, job_environment, new_job_folder, read_record
from gpu_runner.netns import RankNetwork
from gpu_runner.text import LineMarker
from labs.protocol import EventType

GROUP_PORT = 29500  # the first gloo rendezvous, on rank 0's own address: no other job can hold it
CASE_SECONDS = 30.0  # default per distributed case, within the lab's wall time
START_SECONDS = 60.0  # for a group's processes to import the submission, and for each join
CALLS_DIR = "calls"  # in the runner folder: timed calls' inputs, written by the worker, opened by name
FAILURE_GRACE_SECONDS = 1.0  # after one rank fails, how long its peers may take to report theirs
MAX_EVENTS_KEPT = 64
# gloo's words for "the rank at the other end went away": a consequence, never the root cause.
PEER_LOSS = re.compile(r"Connection (closed|reset) by peer|Broken pipe|Connection refused|Timed out|timed out")
# Events a rank's harness waits on an answer to (or the worker keeps a count of), handled as in a
# plain case by gpu_runner.grading.collect: a meter, a timed batch's begin and end.
ANSWERED = ("meter", "bench_begin", "bench_end")
FAILED = "a rank failed"
HANG = (
    "did not finish in time (a hang? e.g. a recv with no matching send, or ranks calling collectives in "
    "different orders)"
)


class GroupEnded(Exception):
    """A process of the group ended, or the job's time ran out; the message is for the student.
    ``done``: the ranks whose awaited event had arrived."""

    def __init__(
        self, message: str, found: dict[int, tuple[float, dict]] | None = None, *, import_error: dict | None = None
    ):
        super().__init__(message)
        self.found = dict(found or {})
        self.done = frozenset(self.found)
        self.import_error = import_error  # the submission's import failed on a rank: its error


@dataclass(eq=False)
class Member:
    """One process of a group (a rank) and the events it has sent."""

    rank: int
    process: launcher.JobProcess
    folder: JobFolder
    box: sandbox.Sandbox
    events: list[tuple[float, dict]] = field(default_factory=list)  # (worker clock, event)
    started: bool = False  # the harness said so, before importing anything of the submission's
    parked: bool = False  # frozen, outside the current process group

    def take(self, types: tuple[str, ...], number: int | None) -> tuple[float, dict] | None:
        for position, (at, event) in enumerate(self.events):
            if event["type"] in types and (number is None or event.get("n", event.get("index")) == number):
                del self.events[: position + 1]
                return at, event
        return None


@dataclass(eq=False)
class Group:
    """``ranks`` harness processes of one role (the student's or the reference's), started together
    and driven together; ``ranks`` 1 is a plain process. The first ``world_size`` of them are in
    the current process group (``join``): they are the ``active`` ones that commands go to."""

    role: str  # "student" or "reference"
    ranks: int
    job_wall_seconds: float
    network: RankNetwork | None = None
    members: list[Member] = field(default_factory=list)
    world_size: int = 0  # of the process group the active ranks last joined (``ranks`` for a plain process)
    joins: int = 0
    stale: bool = False  # a case failed in the current process group: re-form it before the next

    @property
    def active(self) -> list[Member]:
        return self.members[: self.world_size]

    @classmethod
    def start(
        cls,
        grading,
        *,
        role: str,
        ranks: int,
        mode: str,
        on_output: Callable[[int, str], None],
        on_event: Callable[[int, dict], bytes | None] | None = None,
        tag: str = "",
    ) -> Group:
        """Start the group's processes: the harness in ``mode`` on the student's files (or the lab's
        ``reference.py``). Ranks then wait for ``join``; a plain process for its commands."""
        lab = grading.lab
        wall = float(grading.limits["wall_seconds"])
        group = cls(role=role, ranks=ranks, world_size=1 if ranks == 1 else 0, job_wall_seconds=wall)
        # The lab's wall time covers the whole job: these processes get what is left of it.
        left = wall - (time.time() - grading.marks.get("launched", time.time()))
        limits = {**grading.limits, "wall_seconds": max(left, 1.0)}
        gpus = sandbox.assigned_gpus() if grading.device == "cuda" else ()
        try:
            if ranks > 1 and grading.config.sandboxed:
                group.network = RankNetwork.create(ranks)
            for rank in range(ranks):
                folder = new_job_folder(
                    f"{grading.job_id}{role[0]}{tag}{rank}", lab=lab, config=grading.config, limits=grading.limits
                )
                try:
                    if role == "student":
                        for name, text in grading.files.items():
                            folder.write_box_file(name, text.encode("utf-8"))
                        entry, forbidden = lab.entry, lab.forbidden
                    else:
                        folder.write_box_file("reference.py", lab.reference_module.read_bytes())
                        entry, forbidden = "reference.py", ()
                    calls = folder.runner / CALLS_DIR
                    calls.mkdir(mode=0o311)  # the job may open a call's file by its name, never list the folder
                    calls.chmod(0o311)
                    seat = group.network.seat(rank) if group.network is not None else None
                    box = sandbox.Sandbox(grading.config, folder, limits, gpus, network=seat)
                    env = job_environment(folder, device=grading.device, interpreted=grading.interpreted)
                    if ranks > 1:
                        env.update(AISYS_RANK=str(rank), AISYS_WORLD_SIZE=str(ranks))
                        if group.network is not None:  # rank 0 holds the rendezvous; gloo talks over eth0
                            env["AISYS_GROUP_ADDR"] = group.network.address(0)
                            env["GLOO_SOCKET_IFNAME"] = "eth0"  # the sandbox's hostname need not resolve
                        else:  # unsandboxed (development only): the host's loopback
                            env.update(AISYS_GROUP_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo")
                    member = Member(rank=rank, process=None, folder=folder, box=box)  # type: ignore[arg-type]
                    member.process = launcher.JobProcess(
                        harness_command(grading.config, folder, mode=mode, entry=entry, forbidden=forbidden),
                        sandbox=box,
                        env=env,
                        on_output=lambda text, r=rank: on_output(r, text),
                        on_event=_keeper(member, rank, on_event),
                    )
                except BaseException:
                    folder.remove()
                    raise
                group.members.append(member)
        except BaseException:
            group.stop()
            raise
        return group

    # -- driving the processes -----------------------------------------------------------------

    def send(self, data: bytes | Callable[[Member], bytes], members: list[Member] | None = None) -> None:
        """To each active member (or each of ``members``)."""
        for member in self.active if members is None else members:
            member.process.send(data(member) if callable(data) else data)

    def join(self, size: int) -> None:
        """Re-form the process group on ranks ``0..size-1``: every process leaves the one it is in,
        the first ``size`` join a new one (its rendezvous on a fresh port), and the others are
        parked: frozen until a later ``join`` needs them. GroupEnded if a rank could not join."""
        if not 1 < size <= self.ranks:
            raise ValueError(f"a process group of {size} in a group of {self.ranks} processes")
        for member in self.members:
            if member.parked:
                member.box.thaw()
                member.parked = False
        self.joins += 1
        port = GROUP_PORT + self.joins - 1 if self.network is not None else _free_port()
        self.send(f"join {size} {port}\n".encode(), self.members)
        self.world_size = 0  # until every process has answered
        try:
            self.wait_all("joined", deadline=time.monotonic() + START_SECONDS, members=self.members)
        except GroupEnded as exc:
            if str(exc) != HANG:
                raise
            waiting = [str(m.rank) for m in self.members if m.rank not in exc.done]
            still = f"{'ranks' if len(waiting) > 1 else 'rank'} {', '.join(waiting)} still joining"
            raise GroupEnded(
                f"the ranks did not form a process group of {size} within {START_SECONDS:g} s ({still})", exc.found
            ) from None
        self.world_size, self.stale = size, False
        for member in self.members[size:]:
            member.parked = member.box.freeze()

    @property
    def parked(self) -> bool:
        """Whether every process outside the current process group is frozen."""
        return all(member.parked for member in self.members[self.world_size :])

    def wait_all(
        self,
        *types: str,
        number: int | None = None,
        deadline: float | None = None,
        failed: Callable[[dict], bool] | None = None,
        members: list[Member] | None = None,
    ) -> list[tuple[float, dict]]:
        """Every active member's (or each of ``members``') next event of one of ``types`` (for call
        or case ``number``), pumping all of the group's pipes meanwhile. GroupEnded when a process
        ends first, when ``deadline`` passes, or ``FAILURE_GRACE_SECONDS`` after an event for which
        ``failed`` is true (its peers may be stuck waiting for it); the exception carries the events
        that did arrive."""
        members = self.active if members is None else members
        found: dict[int, tuple[float, dict]] = {}
        give_up: float | None = None
        while True:
            for member in members:
                if member.rank in found:
                    continue
                for _, event in member.events:
                    if event["type"] in ("import_failed", "join_failed"):
                        record = read_record(member.folder, "import")
                        error = record["error"] if not record.get("ok") else None
                        raise GroupEnded(
                            self._failed_start(member, event["type"], error),
                            found,
                            import_error=error if event["type"] == "import_failed" else None,
                        )
                got = member.take(types, number)
                if got is not None:
                    found[member.rank] = got
                    if failed is not None and failed(got[1]) and give_up is None:
                        give_up = time.monotonic() + FAILURE_GRACE_SECONDS
            if len(found) == len(members):
                return [found[member.rank] for member in members]
            now = time.monotonic()
            if give_up is not None and now >= give_up:
                raise GroupEnded(FAILED, found)
            if deadline is not None and now >= deadline:
                raise GroupEnded(HANG, found)
            limit = min(x for x in (deadline, give_up, now + 0.5) if x is not None)
            if not self.pump(max(0.0, limit - now)):
                raise GroupEnded(self.ended(), found)

    def pump(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for any member's pipes, then handle what every member sent; False
        once one is over."""
        readers, writers = [], []
        for member in self.members:
            if member.process.ended:
                return False
            for key in member.process.selector.get_map().values():
                (writers if key.data == "stdin" else readers).append(key.fd)
        if timeout > 0:
            select.select(readers, writers, [], timeout)
        return all([member.process.pump(0) for member in self.members])

    def ended(self) -> str:
        """Why the group stopped: which member ended, and how."""
        for member in self.members:
            process = member.process
            if process.timed_out:
                return f"the job's time limit of {self.job_wall_seconds:g} s ran out"
            if process.output_limited:
                return "the output limit was exceeded"
            if process.ended:
                where = f"rank {member.rank}'s process" if self.ranks > 1 else "the process"
                return f"{where} ended"
        return "the group stopped"

    def _failed_start(self, member: Member, kind: str, error: dict | None) -> str:
        what = "could not be imported" if kind == "import_failed" else "could not join the process group"
        where = f"on rank {member.rank}" if self.ranks > 1 else ""
        detail = f": {describe_error(error)}" if error is not None else ""
        return f"the module {what} {where}".strip() + detail

    def sent_bytes(self) -> list[int] | None:
        """What each process (parked ones included) has sent its peers so far, counted by the
        kernel (None: no network)."""
        return self.network.sent_bytes() if self.network is not None else None

    def freeze(self) -> bool:
        """Freeze the active members (the parked ones are already): False where this worker cannot."""
        frozen = [member.box.freeze() for member in self.active]
        return all(frozen)

    def thaw(self) -> None:
        for member in self.active:
            member.box.thaw()

    def stop(self) -> list[launcher.ProcessOutcome]:
        outcomes = []
        for member in self.members:
            try:
                outcomes.append(member.process.stop())
            finally:
                member.folder.remove()
        self.members = []
        if self.network is not None:
            self.network.close()
            self.network = None
        return outcomes


def outside_case(event: dict) -> bytes | None:
    """The answer to an event the harness waits on, outside any case (in a timed call, which the
    worker times itself): no batch is timed there and nothing metered, but the harness must not
    wait for an answer until the job's time runs out."""
    return {"bench_begin": b"skip\n", "meter": b"count -1\n"}.get(event["type"])


def _keeper(member: Member, rank: int, on_event) -> Callable[[dict], bytes | None]:
    def keep(event: dict) -> bytes | None:
        if event["type"] == "started":
            member.started = True
        if event["type"] in ANSWERED:
            return on_event(rank, event) if on_event is not None else outside_case(event)
        member.events.append((time.monotonic(), event))
        del member.events[:-MAX_EVENTS_KEPT]  # a flood keeps the newest only
        return None

    return keep


def _free_port() -> int:
    """A port for an unsandboxed group (development only), which shares the host's loopback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# the distributed correctness cases
# ------------------------------------------------------------------------------------------------


def rank_cases(grading) -> list[int]:
    return [i for i, case in enumerate(grading.cases) if "world_size" in case and "timed" not in case]


def run_rank_cases(grading, *, check: Callable[[int, dict, object], None]) -> None:
    """Run every distributed case of ``grading`` on its ranks, in order; ``check(index, runtime,
    outputs)`` judges each (``outputs``: the ranks' values, in rank order). If every case passed,
    the group is kept for the timing phase (``take_for_timing``); else it is stopped here."""
    indices = rank_cases(grading)
    hung: str | None = None
    group: Group | None = None
    try:
        for position, index in enumerate(indices):
            case, test = grading.cases[index], grading.tests[index]
            if hung is not None:
                _publish(grading, index, f"not run: test '{hung}' did not finish in time; fix that first")
                continue
            world_size = int(case["world_size"])
            if group is None:
                group = _start_cases(grading, indices[position:])
            if group.world_size != world_size or group.stale:
                group.join(world_size)
            grading.current_case = index
            deadline = time.monotonic() + float(case.get("timeout", CASE_SECONDS))
            before = group.sent_bytes()
            started = time.monotonic()
            group.send(f"case {index}\n".encode())
            try:
                group.wait_all("case_done", number=index, deadline=deadline, failed=lambda e: e.get("ok") is False)
            except GroupEnded as exc:
                failures = _failures(grading, group, index, str(exc), exc.done)
                _fail(grading, index, group, failures)
                if str(exc) == HANG:
                    hung = case["name"]
                group.stop()  # a rank died, hangs, or is stuck waiting for one that failed: a fresh group next
                group = None
                continue
            test.duration = round(time.monotonic() - started, 4)
            records = [read_record(member.folder, index) for member in group.active]
            failures = {m.rank: r["error"] for m, r in zip(group.active, records, strict=True) if not r.get("ok")}
            if failures:
                _fail(grading, index, group, {r: ("error", e) for r, e in failures.items()})
                group.stale = True  # every rank came back: the same processes go on, in a new process group
                continue
            sent = group.sent_bytes()
            by_rank = None if before is None else [after - first for first, after in zip(before, sent, strict=True)]
            runtime = {
                # every process's bytes count, a parked one's too; each active rank's own as well
                "network_bytes": None if by_rank is None else sum(by_rank),
                "network_bytes_by_rank": None if by_rank is None else by_rank[:world_size],
                "meters": dict(grading.meters.get(index, {})),
                "world_size": world_size,
            }
            check(index, runtime, [r["value"] for r in records])
        if group is not None and _timed_sizes(grading) and all(grading.tests[i].outcome == "passed" for i in indices):
            grading.rank_group, group = group, None  # for the timing phase, which stops it
    except GroupEnded as exc:  # a group that could not start (import) or form (join)
        if exc.import_error is not None and grading.import_error is None:
            grading.import_error = exc.import_error  # the verdict is then import_error (or compile_error)
        for index in indices:
            if grading.tests[index].outcome == "not_run":
                _publish(grading, index, f"not run: {exc}")
    finally:
        grading.current_case = None
        if group is not None:
            group.stop()


def take_for_timing(grading, world_size: int) -> Group | None:
    """The group that ran the distributed cases, for the student's side of a timed case on
    ``world_size`` ranks, joined; None when there is none to take (or its spare processes could
    not be parked: a running one could work for its peers while they are timed)."""
    group, grading.rank_group = grading.rank_group, None
    if group is None:
        return None
    try:
        if 1 < world_size <= group.ranks:
            group.join(world_size)
            if group.parked:
                return group
    except GroupEnded:
        pass  # the timing phase starts a group of its own, and reports what that one says
    except BaseException:
        group.stop()
        raise
    group.stop()
    return None


def _capacity(grading, indices: list[int]) -> int:
    """Processes for a group to run the distributed cases ``indices`` and then, if the lab has one,
    the student's side of its distributed timed case."""
    return max([int(grading.cases[i]["world_size"]) for i in indices] + _timed_sizes(grading))


def _timed_sizes(grading) -> list[int]:
    """The world sizes of the lab's distributed timed cases."""
    sizes = [int(case["timed"].get("world_size", 1)) for case in grading.cases if "timed" in case]
    return [size for size in sizes if size > 1]


def _start_cases(grading, indices: list[int]) -> Group:
    """A group for the distributed cases ``indices``: started, each rank holding its own inputs of
    the cases it takes part in, before any has joined a process group."""
    ranks = _capacity(grading, indices)
    markers = [LineMarker(f"[rank {rank}] ") for rank in range(ranks)]

    def on_output(rank: int, text: str) -> None:
        grading.sink.publish(EventType.LOG, {"stream": "output", "text": markers[rank](text), "inputs": True})

    def on_event(rank: int, event: dict) -> bytes | None:
        from gpu_runner.grading import collect  # as for a plain case's (imported here: no cycle at import)

        return collect(grading, event)

    group = Group.start(
        grading, role="student", ranks=ranks, mode="cases", on_output=on_output, on_event=on_event, tag="r"
    )
    try:
        try:
            group.wait_all("imported", deadline=time.monotonic() + START_SECONDS, members=group.members)
        except GroupEnded:
            silent = [m.rank for m in group.members if m.process.ended and not m.started and not m.process.timed_out]
            if silent:  # not the submission's doing: the harness runs before anything of it
                tail = bytes(group.members[silent[0]].process.tail).decode(errors="replace")[-800:]
                raise RuntimeError(f"the sandboxed harness of rank {silent[0]} never started: {tail}") from None
            raise
        # Only now, with the submission imported on every rank, do the inputs enter the sandboxes.
        for member in group.members:
            payload = {
                "cases": [
                    {
                        "index": i,
                        "name": grading.cases[i]["name"],
                        "inputs": _rank_inputs(grading.cases[i], member.rank),
                    }
                    for i in indices
                    if member.rank < int(grading.cases[i]["world_size"])
                ]
            }
            name = member.folder.write_box_file("_cases.pt", _serialize(payload), unique=True)
            member.process.send(f"go {name}\n".encode())
    except BaseException:
        group.stop()
        raise
    return group


def _rank_inputs(case: dict, rank: int) -> dict:
    """A rank's own inputs: ``inputs[rank]`` where the case lists one dict per rank."""
    inputs = case["inputs"]
    if isinstance(inputs, list):
        if len(inputs) != int(case["world_size"]):
            raise ValueError(f"case {case['name']}: {len(inputs)} inputs for {case['world_size']} ranks")
        return inputs[rank]
    return inputs


def _failures(grading, group: Group, index: int, why: str, done: frozenset[int]) -> dict[int, tuple[str, object]]:
    """After a group ended in case ``index``: what each rank said, or how it ended."""
    group.pump(FAILURE_GRACE_SECONDS / 4)  # the last words of the ranks still running
    failures: dict[int, tuple[str, object]] = {}
    for member in group.active:
        if member.rank in done or member.take(("case_done",), index) is not None:
            record = read_record(member.folder, index)
            if not record.get("ok"):
                failures[member.rank] = ("error", record["error"])
            continue
        process = member.process
        if process.ended and not process.timed_out and process.proc.poll() is not None:
            code = process.proc.returncode
            signal_name = member.box.exit_signal(code)
            how = f"was killed by {signal_name}" if signal_name else f"exited with code {code}"
            usage = member.box.usage()
            if usage.oom_kills:
                how += f" (out of memory: the limit is {grading.limits['memory_mb']} MiB per rank)"
            failures[member.rank] = ("ended", f"its process {how}")
    if not failures or why == HANG:
        for member in group.active:
            failures.setdefault(member.rank, ("ended", why if why == HANG else f"stopped: {why}"))
    return failures


def _fail(grading, index: int, group: Group, failures: dict[int, tuple[str, object]]) -> None:
    """Fail case ``index`` with the root cause: a rank's own error before a peer's lost connection."""

    def text(item: tuple[str, object]) -> str:
        kind, value = item
        return describe_error(value) if kind == "error" else str(value)

    for kind, value in failures.values():
        if kind == "error":
            grading.case_errors.append(value)  # a forbidden call in a rank is one like any other
    causes = [r for r in sorted(failures) if not PEER_LOSS.search(text(failures[r]).split("\n")[0])] or sorted(failures)
    first = causes[0]
    message = text(failures[first])
    if group.world_size > 1 and message != HANG:
        message = f"rank {first} of {group.world_size}: {message}"
    others = [r for r in sorted(failures) if r != first]
    if others and failures[first][0] == "error":
        message += f"\n({'ranks' if len(others) > 1 else 'rank'} {', '.join(map(str, others))} stopped with it)"
    # The lab's advice for a hang or a rank killed by a signal (``"hints"`` of the case).
    hints = grading.cases[index].get("hints") or {}
    for key, hint in hints.items():
        if (key == "hang" and HANG in message) or (key != "hang" and f"killed by {key}" in message):
            message += "\n" + str(hint)
    _publish(grading, index, message)


def _publish(grading, index: int, message: str) -> None:
    from gpu_runner.grading import publish_test

    test = grading.tests[index]
    test.settle("failed", message)
    publish_test(grading, test)


def _serialize(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()

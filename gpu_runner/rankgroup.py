"""The ranks of a distributed case: one sandbox per rank, on a private network the worker meters.

A case with ``"world_size": n`` (docs/authoring-labs.md, "Distributed labs") does not run in the
job's one process. The worker starts ``n`` harness processes, each in a sandbox of its own (its
own files, ``/tmp``, ``/dev/shm``, IPC and pid namespaces, its own cgroup and limits) and in a
network namespace of its own, joined to its peers' only through a private router
(``gpu_runner.netns``), under a seccomp filter that refuses every socket but the network's
(``gpu_runner.seccomp``). Every byte one rank passes another leaves through its ``eth0`` and is
counted by the kernel, read by the worker per rank (``network_bytes``, ``network_bytes_by_rank``);
nothing in a rank can reset that count, reach a peer's memory or files, or see a peer's sockets.

Each rank gets only its own inputs (a case's ``inputs`` may be a list, one dict per rank), joins
the gloo group, and runs the case the worker names when the worker names it, so all ranks are in
the same case. A rank that raises, dies or hangs fails that case, with the root cause (not a
peer's "connection closed"); the group is then replaced by a fresh one for the next case, or, after
a hang, the remaining distributed cases are not run. The grader's ``check`` gets the list of the
ranks' outputs and ``case["runtime"]["network_bytes"]``.

``Group`` is also what the timing phase runs its processes in (``gpu_runner.timing``): a
single-process group of one, without a network of its own, for a plain lab.

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

GROUP_PORT = 29500  # the gloo rendezvous, on rank 0's own address: no other job can hold it
CASE_SECONDS = 30.0  # default per distributed case, within the lab's wall time
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

    def take(self, types: tuple[str, ...], number: int | None) -> tuple[float, dict] | None:
        for position, (at, event) in enumerate(self.events):
            if event["type"] in types and (number is None or event.get("n", event.get("index")) == number):
                del self.events[: position + 1]
                return at, event
        return None


@dataclass(eq=False)
class Group:
    """``world_size`` harness processes of one role (the student's or the reference's), started
    together and driven together; ``world_size`` 1 is a plain process."""

    role: str  # "student" or "reference"
    world_size: int
    job_wall_seconds: float
    network: RankNetwork | None = None
    members: list[Member] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        grading,
        *,
        role: str,
        world_size: int,
        mode: str,
        on_output: Callable[[int, str], None],
        on_event: Callable[[int, dict], bytes | None] | None = None,
        prepare: Callable[[JobFolder], None] | None = None,
        tag: str = "",
    ) -> Group:
        """Start the group's processes: the harness in ``mode`` on the student's files (or the lab's
        ``reference.py``); ``prepare`` adds to each folder before its process starts."""
        lab = grading.lab
        wall = float(grading.limits["wall_seconds"])
        group = cls(role=role, world_size=world_size, job_wall_seconds=wall)
        # The lab's wall time covers the whole job: these processes get what is left of it.
        left = wall - (time.time() - grading.marks.get("launched", time.time()))
        limits = {**grading.limits, "wall_seconds": max(left, 1.0)}
        gpus = sandbox.assigned_gpus() if grading.device == "cuda" else ()
        try:
            if world_size > 1 and grading.config.sandboxed:
                group.network = RankNetwork.create(world_size)
            for rank in range(world_size):
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
                    if prepare is not None:
                        prepare(folder)
                    seat = group.network.seat(rank) if group.network is not None else None
                    box = sandbox.Sandbox(grading.config, folder, limits, gpus, network=seat)
                    env = job_environment(folder, device=grading.device, interpreted=grading.interpreted)
                    if world_size > 1:
                        env.update(AISYS_RANK=str(rank), AISYS_WORLD_SIZE=str(world_size))
                        if group.network is not None:  # rank 0 holds the rendezvous; gloo talks over eth0
                            env.update(AISYS_GROUP_ADDR=group.network.address(0), AISYS_GROUP_PORT=str(GROUP_PORT))
                            env["GLOO_SOCKET_IFNAME"] = "eth0"  # the sandbox's hostname need not resolve
                        else:  # unsandboxed (development only): the host's loopback
                            env.update(AISYS_GROUP_ADDR="127.0.0.1", AISYS_GROUP_PORT=str(_free_port()))
                            env["GLOO_SOCKET_IFNAME"] = "lo"
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

    def send(self, data: bytes | Callable[[Member], bytes]) -> None:
        for member in self.members:
            member.process.send(data(member) if callable(data) else data)

    def wait_all(
        self,
        *types: str,
        number: int | None = None,
        deadline: float | None = None,
        failed: Callable[[dict], bool] | None = None,
    ) -> list[tuple[float, dict]]:
        """Every member's next event of one of ``types`` (for call or case ``number``), pumping all
        of their pipes meanwhile. GroupEnded when one ends first, when ``deadline`` passes, or
        ``FAILURE_GRACE_SECONDS`` after an event for which ``failed`` is true (its peers may be
        stuck waiting for it); the exception carries the events that did arrive."""
        found: dict[int, tuple[float, dict]] = {}
        give_up: float | None = None
        while True:
            for member in self.members:
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
            if len(found) == len(self.members):
                return [found[r] for r in range(len(self.members))]
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
                where = f"rank {member.rank}'s process" if self.world_size > 1 else "the process"
                return f"{where} ended"
        return "the group stopped"

    def _failed_start(self, member: Member, kind: str, error: dict | None) -> str:
        what = "could not be imported" if kind == "import_failed" else "could not join the process group"
        where = f"on rank {member.rank}" if self.world_size > 1 else ""
        detail = f": {describe_error(error)}" if error is not None else ""
        return f"the module {what} {where}".strip() + detail

    def sent_bytes(self) -> list[int] | None:
        """What each member has sent its peers so far, counted by the kernel (None: no network)."""
        return self.network.sent_bytes() if self.network is not None else None

    def freeze(self) -> bool:
        frozen = [member.box.freeze() for member in self.members]
        return all(frozen)

    def thaw(self) -> None:
        for member in self.members:
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


def _keeper(member: Member, rank: int, on_event) -> Callable[[dict], bytes | None]:
    def keep(event: dict) -> bytes | None:
        if event["type"] == "started":
            member.started = True
        if on_event is not None and event["type"] in ANSWERED:
            return on_event(rank, event)
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
    outputs)`` judges each (``outputs``: the ranks' values, in rank order)."""
    indices = rank_cases(grading)
    hung: str | None = None
    group: Group | None = None
    try:
        for index in indices:
            case, test = grading.cases[index], grading.tests[index]
            if hung is not None:
                _publish(grading, index, f"not run: test '{hung}' did not finish in time; fix that first")
                continue
            world_size = int(case["world_size"])
            if group is None or group.world_size != world_size:
                if group is not None:
                    group.stop()
                group = None
                group = _start_cases(
                    grading, world_size, [i for i in indices if grading.cases[i]["world_size"] == world_size]
                )
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
                group.stop()
                group = None
                continue
            test.duration = round(time.monotonic() - started, 4)
            records = [read_record(member.folder, index) for member in group.members]
            failures = {m.rank: r["error"] for m, r in zip(group.members, records, strict=True) if not r.get("ok")}
            if failures:
                _fail(grading, index, group, {r: ("error", e) for r, e in failures.items()})
                group.stop()  # its peers may be stuck waiting for the failed rank: a fresh group next
                group = None
                continue
            sent = group.sent_bytes()
            by_rank = None if before is None else [after - first for first, after in zip(before, sent, strict=True)]
            runtime = {
                "network_bytes": None if by_rank is None else sum(by_rank),
                "network_bytes_by_rank": by_rank,
                "meters": dict(grading.meters.get(index, {})),
                "world_size": world_size,
            }
            check(index, runtime, [r["value"] for r in records])
    except GroupEnded as exc:  # a group that could not start (import, join)
        if exc.import_error is not None and grading.import_error is None:
            grading.import_error = exc.import_error  # the verdict is then import_error (or compile_error)
        for index in indices:
            if grading.tests[index].outcome == "not_run":
                _publish(grading, index, f"not run: {exc}")
    finally:
        grading.current_case = None
        if group is not None:
            group.stop()


def _start_cases(grading, world_size: int, indices: list[int]) -> Group:
    """A group for the distributed cases of one size: started, joined, holding each rank's inputs."""

    markers = [LineMarker(f"[rank {rank}] ") for rank in range(world_size)]

    def on_output(rank: int, text: str) -> None:
        grading.sink.publish(EventType.LOG, {"stream": "output", "text": markers[rank](text)})

    def on_event(rank: int, event: dict) -> bytes | None:
        from gpu_runner.grading import collect  # as for a plain case's (imported here: no cycle at import)

        return collect(grading, event)

    group = Group.start(
        grading, role="student", world_size=world_size, mode="cases", on_output=on_output, on_event=on_event, tag="r"
    )
    try:
        try:
            group.wait_all("joined", deadline=time.monotonic() + 60.0)
        except GroupEnded:
            silent = [m.rank for m in group.members if m.process.ended and not m.started and not m.process.timed_out]
            if silent:  # not the submission's doing: the harness runs before anything of it
                tail = bytes(group.members[silent[0]].process.tail).decode(errors="replace")[-800:]
                raise RuntimeError(f"the sandboxed harness of rank {silent[0]} never started: {tail}") from None
            raise
        for member in group.members:
            payload = {
                "cases": [
                    {
                        "index": i,
                        "name": grading.cases[i]["name"],
                        "inputs": _rank_inputs(grading.cases[i], member.rank),
                    }
                    for i in indices
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
    for member in group.members:
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
        for member in group.members:
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

"""Grader for the ``ring_allreduce`` lab: all-reduce, reduce-scatter and all-gather over send/recv.

Trust split (see docs/authoring-labs.md): ``cases`` and ``check`` run in the worker, where the
exact sums are computed; ``run`` is shipped alone into the sandbox, so it imports what it needs inside its
body and uses no other name from this file. ``run`` starts the ranks with ``labs.ranks`` (gloo
over loopback, one forked process per rank); each rank hands its inputs to the student's
function and sends back what came out, with the bytes it sent, for ``check`` to judge.

The ranks are forks of one process, so each holds every rank's inputs in memory; a submission
could read its peers' tensors there instead of receiving them. So each rank flips the signs of
its inputs at random first, from a seed it draws after the fork and reports with its results
(``_rank_inputs``): only that rank knows its actual inputs, and ``check`` rebuilds them to compute
the exact answers.

Contract (README.md): for ``p`` ranks and a tensor of ``N`` elements, chunk ``i`` is
``torch.tensor_split(t.reshape(-1), p)[i]`` (the first ``N % p`` chunks have one element more)
and belongs to rank ``i``. ``ring_allreduce(t)`` sums ``t`` over the ranks in place, with
bit-identical results on every rank; ``ring_reduce_scatter(t)`` returns rank ``i``'s chunk of the
sum; ``ring_allgather(chunk)`` returns every rank's chunk, concatenated in rank order (chunks may
have any lengths, zero included). The busiest rank may send at most 5% (plus 1 KiB) more than the
ring's ``2(p-1)/p * N`` elements for an all-reduce, or ``(p-1)/p * N`` for either half.
"""

from __future__ import annotations

import statistics

import torch

from labs.grading import CheckFailed

# Per-spawn limits (seconds). A correct solution needs well under a second for any correctness
# run on 2 busy cores (the 1e6-element all-reduce on 4 ranks takes ~0.15 s), so 15 s only ever
# trips on a hang; the benchmark spawn needs a few seconds and is capped by BENCH_CAP_SECONDS.
SPAWN_TIMEOUT = 15.0
BENCH_TIMEOUT = 45.0
# Benchmark: interleaved (student, gloo) pairs after one warm-up pair; at least BENCH_MIN_ROUNDS,
# then stop once the timed region has run BENCH_CAP_SECONDS (4 ranks on 2 busy cores: 0.07-0.2 s a pair).
BENCH_WORLD_SIZE = 4
BENCH_NUMEL = 1_000_003
BENCH_MIN_ROUNDS = 5
BENCH_MAX_ROUNDS = 10
BENCH_CAP_SECONDS = 3.0
BENCH_SAMPLES = 16  # positions of every timed output compared with the exact sum
# Bytes: the busiest rank may exceed the ring's per-rank volume by this factor, plus a little for
# control messages (e.g. passing the chunk lengths around before an all-gather).
BYTES_FACTOR = 1.05
BYTES_SLACK = 1024
# A float sum of p numbers, in any order, is within (p - 1) * eps * sum|x_k| of the exact sum;
# twice that leaves room for the rounding of the reference. Halving the precision (bfloat16 or
# float16 on the wire, float32 accumulation of float64) misses it by orders of magnitude.
EPS = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}
F32, F64, I64 = torch.float32, torch.float64, torch.int64
AR, RS, AG = "allreduce", "reduce_scatter", "allgather"
OPS = {AR: "ring_allreduce", RS: "ring_reduce_scatter", AG: "ring_allgather"}


# --------------------------------------------------------------------------------------------
# cases: trusted, from the job's secret seed
# --------------------------------------------------------------------------------------------


def _values(gen: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype, wide: bool = False) -> torch.Tensor:
    """Random rank inputs. int64 values reach 2**58, so routing them through float64 loses digits;
    ``wide`` spreads float magnitudes over 1e-3..1e3, where the summation order shows in the bits."""
    if dtype == torch.int64:
        return torch.randint(-(2**58), 2**58, shape, generator=gen, dtype=torch.int64)
    if not wide:
        return torch.randn(shape, generator=gen, dtype=dtype)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    return (x * 10.0 ** (torch.rand(shape, generator=gen, dtype=torch.float64) * 6 - 3)).to(dtype)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _describe(op: str, world_size: int, shape: tuple[int, ...], dtype: torch.dtype) -> str:
    numel = 1
    for size in shape:
        numel *= size
    elements = f"{numel:,} {_dtype_name(dtype)} element{'s' if numel != 1 else ''}"
    if len(shape) != 1:
        elements += f" (shape {tuple(shape)})"
    return f"{OPS[op]} on {world_size} ranks, {elements}"


def _reduce_test(gen: torch.Generator, op: str, world_size: int, shape, dtype, wide: bool = False) -> dict:
    """One all-reduce or reduce-scatter: the rank inputs before each rank's secret sign flips."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    tensors = [_values(gen, shape, dtype, wide) for _ in range(world_size)]
    return {"op": op, "what": _describe(op, world_size, shape, dtype), "tensors": tensors}


def _gather_test(gen: torch.Generator, world_size: int, lengths: list[int], dtype) -> dict:
    chunks = [_values(gen, (n,), dtype) for n in lengths]
    what = f"ring_allgather on {world_size} ranks, {_dtype_name(dtype)} chunks of lengths {lengths}"
    return {"op": AG, "what": what, "tensors": chunks}


def _signs(gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """+1 or -1 per element. run() draws the same in each rank: the two must stay identical."""
    return (torch.randint(0, 2, like.shape, generator=gen) * 2 - 1).to(like.dtype)


def _rank_inputs(tensors: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """What a rank actually passed to the student, test after test, given the seed it drew.
    Sign flips are exact in every dtype, and leave sum|x| (the float tolerance) as it was."""
    gen = torch.Generator().manual_seed(seed)
    return [tensor * _signs(gen, tensor) for tensor in tensors]


# name, points, {world size: [(op, size or shape, or for an all-gather the chunk lengths, dtype)]}, checks.
# Sizes 1 and p - 1 leave some ranks with empty chunks; 7 is divisible by none of 2, 3, 4.
# "wide" spreads the values over six decades, so that summing in another order changes the bits.
PLAN = [
    ("allreduce_2_ranks", 15, {2: [(AR, 1, F32), (AR, 7, F64), (AR, 7, I64), (AR, 1000, F32), (AR, 65_537, F64)]}, {}),
    (
        "allreduce_3_ranks",
        15,
        {3: [(AR, 1, I64), (AR, 2, F32), (AR, 7, F64), (AR, (3, 5), F32), (AR, 10_007, I64)]},
        {},
    ),
    (
        "allreduce_4_ranks",
        15,
        {4: [(AR, 1, F64), (AR, 3, I64), (AR, 7, F32), (AR, 4099, F64), (AR, 1_000_000, F32)]},
        {},
    ),
    (
        "reduce_scatter",
        15,
        {
            3: [(RS, 1, F32), (RS, 2, I64), (RS, 7, F64), (RS, 1000, F32)],
            4: [(RS, 3, F64), (RS, 7, I64), (RS, 10_001, F32)],
        },
        {},
    ),
    (
        "allgather",
        15,
        {
            3: [(AG, [3, 2, 2], F64), (AG, [0, 4, 1], I64), (AG, [1, 0, 0], F32)],
            4: [(AG, [1, 0, 0, 0], F32), (AG, [5, 0, 3, 2], I64), (AG, [25_001, 25_001, 25_001, 25_000], F64)],
        },
        {},
    ),
    (
        "identical_on_all_ranks",
        10,
        {3: [(AR, 1003, F32), (AR, 1003, F64)], 4: [(AR, 4099, F32)]},
        {"identical": True, "wide": True},
    ),
    (
        "bytes_sent",
        15,
        {4: [(AR, 100_003, F32), (RS, 100_003, F32), (AG, [25_001, 25_001, 25_001, 25_000], F32)]},
        {"count_bytes": True},
    ),
]


def cases(seed: int) -> list[dict]:
    """Every hidden test, generated from the secret seed so inputs cannot be memorised."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name, points, runs, checks in PLAN:
        specs = []
        for world_size, tests in runs.items():
            specs.append(
                {
                    "world_size": world_size,
                    "tests": [
                        _gather_test(gen, world_size, size, dtype)
                        if op == AG
                        else _reduce_test(gen, op, world_size, size, dtype, wide=checks.get("wide", False))
                        for op, size, dtype in tests
                    ],
                }
            )
        inputs = {"kind": "collectives", "label": name, "runs": specs, "timeout": SPAWN_TIMEOUT}
        out.append({"name": name, "points": points, "inputs": inputs, **checks})
    out.append(_benchmark_case(gen))
    return out


def _benchmark_case(gen: torch.Generator) -> dict:
    p, n = BENCH_WORLD_SIZE, BENCH_NUMEL
    tensors = [_values(gen, (n,), torch.float32) for _ in range(p)]
    return {
        "name": "benchmark",
        "points": 0,
        "inputs": {
            "kind": "benchmark",
            "label": "benchmark",
            "timeout": BENCH_TIMEOUT,
            "world_size": p,
            "tensors": tensors,
            "min_rounds": BENCH_MIN_ROUNDS,
            "max_rounds": BENCH_MAX_ROUNDS,
            "cap_seconds": BENCH_CAP_SECONDS,
            "samples": BENCH_SAMPLES,
        },
    }


# --------------------------------------------------------------------------------------------
# run: untrusted side, shipped alone into the sandbox
# --------------------------------------------------------------------------------------------


def run(module, inputs: dict):
    """Run the student's collectives on forked gloo ranks and return what each rank got.

    Self-contained on purpose: the runner ships only this function's source into the sandbox.
    In every rank, before the student's code runs, the collectives of the process group itself
    (``ProcessGroup.allreduce`` ..., the ``torch.ops.c10d`` ops) are patched to raise as
    lab.toml's ``forbidden`` names are, and ``ProcessGroup.send`` / ``Backend.send``, which every
    ``dist.send``/``isend`` goes through, count the bytes each rank sends.
    """
    import mmap
    import os
    import re
    import select
    import threading
    import time
    from contextlib import contextmanager

    import torch
    import torch.distributed as dist
    from torch._C._distributed_c10d import Backend, ProcessGroup

    from labs import ranks

    collective_methods = (
        "allreduce allreduce_coalesced allgather allgather_coalesced allgather_into_tensor_coalesced "
        "_allgather_base all_gather_single all_gather_single_coalesced reduce_scatter reduce_scatter_single "
        "reduce_scatter_single_coalesced reduce_scatter_tensor_coalesced _reduce_scatter_base broadcast reduce "
        "alltoall alltoall_base all_to_all_single gather scatter"
    ).split()
    # A hang makes every later spawn hang too; after the first, the remaining cases are skipped.
    state = globals().setdefault("_ring_allreduce_state", {})
    if state.get("hung"):
        raise RuntimeError(f"not run: test '{state['hung']}' did not finish in time (a hang); fix that first")

    if "targets" not in state:  # resolved once here, not in every forked rank (~20 ms each)
        targets = [
            (cls, attr, f"torch.distributed.{cls.__name__}.{attr}")
            for cls in (ProcessGroup, Backend)
            for attr in collective_methods
        ]
        for op_name in torch._C._dispatch_get_all_op_names():
            namespace, _, name = op_name.partition("::")
            if namespace in ("c10d", "_c10d_functional", "_c10d_functional_autograd") and "barrier" not in name:
                getattr(getattr(torch.ops, namespace), name)  # creates the op's attribute on the namespace
                targets.append((getattr(torch.ops, namespace), name, f"torch.ops.{namespace}.{name}"))
        state["targets"] = targets

    def guard_rank() -> tuple:
        """Forbid the group's own collectives; count sent bytes. Returns (counter, unguarded)."""
        patched = []
        sent = {"bytes": 0}
        for owner, attr, label in state["targets"]:
            # The raw attribute (for a class, the pybind instancemethod, so that putting it back binds
            # self again); ProcessGroup and Backend define every method they have themselves.
            original = vars(owner).get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
            if original is None:
                continue

            def stub(*args, _label=label, **kwargs):
                raise harness.forbidden(_label)  # noqa: F821 - the harness global of the sandbox

            setattr(owner, attr, stub)
            patched.append((owner, attr, original, stub))

        def counting(original):
            def send(self, tensors, *args, **kwargs):
                sent["bytes"] += sum(t.numel() * t.element_size() for t in tensors)
                return original(self, tensors, *args, **kwargs)

            return send

        ProcessGroup.send = counting(ProcessGroup.send)
        Backend.send = counting(Backend.send)

        @contextmanager
        def unguarded():
            """The grader's own gloo calls (the benchmark's reference) need the real methods."""
            for owner, attr, original, _ in patched:
                setattr(owner, attr, original)
            try:
                yield
            finally:
                for owner, attr, _, stub in patched:
                    setattr(owner, attr, stub)

        return sent, unguarded

    def call_student(op: str, tensor):
        """Call one of the student's functions; say what it returned, as plain data."""
        if op == "allreduce":
            returned = module.ring_allreduce(tensor)
            result = {"value": tensor.detach().clone()}
            if returned is None or returned is tensor:
                result["returned"] = "t" if returned is tensor else "None"
            elif isinstance(returned, torch.Tensor):
                result["returned"], result["returned_value"] = "another tensor", returned.detach().clone()
            else:
                result["returned"] = type(returned).__name__
            return result
        function = module.ring_reduce_scatter if op == "reduce_scatter" else module.ring_allgather
        returned = function(tensor)
        if isinstance(returned, torch.Tensor):
            return {"value": returned.detach().clone()}
        return {"value": None, "returned": type(returned).__name__}

    def private(tensors: list) -> tuple:
        """This rank's own inputs: random sign flips only this process knows (grader._rank_inputs
        rebuilds them from the seed), so peers' tensors, also in this forked memory, are no use."""
        seed = int.from_bytes(os.urandom(7), "little")
        gen = torch.Generator().manual_seed(seed)
        signed = []
        for tensor in tensors:
            signs = (torch.randint(0, 2, tensor.shape, generator=gen) * 2 - 1).to(tensor.dtype)
            signed.append(tensor * signs)
        return seed, signed

    def on_rank(rank: int, world_size: int, tests: list, progress) -> dict:
        sent, _ = guard_rank()
        seed, mine = private([test["tensors"][rank] for test in tests])
        results = []
        for index, test in enumerate(tests):
            progress[2 * rank : 2 * rank + 2] = (index + 1).to_bytes(2, "little")  # for a hang's message
            dist.barrier()  # one test's messages never mix with the next one's, nor its byte count
            before = sent["bytes"]
            try:
                result = call_student(test["op"], mine[index])
            except BaseException as exc:
                exc.add_note(f"(in test: {test['what']})")
                raise
            result["bytes"] = sent["bytes"] - before
            results.append(result)
        return {"seed": seed, "tests": results}

    def bench_rank(rank: int, world_size: int, pipes: dict) -> dict:
        sent, unguarded = guard_rank()
        all_reduce = harness.original("torch.distributed.all_reduce")  # noqa: F821
        broadcast = harness.original("torch.distributed.broadcast")  # noqa: F821
        seed, (base,) = private([inputs["tensors"][rank]])
        clock = time.perf_counter
        # One list per field, one entry per timed call, in the order pair() records them.
        out = {key: [] for key in ("student_s", "gloo_s", "bytes", "shift", "bits", "positions", "samples", "sum")}

        def pair(shift: int) -> None:
            mine = torch.roll(base, shift)  # fresh contents every call: nothing to cache
            reference = mine.clone()
            dist.barrier()
            before, start = sent["bytes"], clock()
            module.ring_allreduce(mine)
            student_s, sent_bytes = clock() - start, sent["bytes"] - before
            # Fingerprint the output at once: work left running in the background after the call
            # returned would show here as a wrong result, not as time charged to gloo.
            picker = torch.Generator().manual_seed(int.from_bytes(os.urandom(7), "little"))
            positions = torch.randint(0, mine.numel(), (int(inputs["samples"]),), generator=picker)
            bits, samples, total = int(mine.view(torch.int32).sum()), mine[positions].clone(), mine.double().sum()
            with unguarded():
                dist.barrier()
                start = clock()
                all_reduce(reference)
                gloo_s = clock() - start
            record = (student_s, gloo_s, sent_bytes, shift, bits, positions, samples, total.item())
            for key, value in zip(out, record, strict=True):
                out[key].append(value)

        pair(0)  # warm-up, outside the timed region
        for values in out.values():
            values.clear()
        os.write(pipes["ready"], b"r")
        if os.read(pipes["go"], 1) != b"g":
            return {"skipped": True}
        began = clock()
        for shift in range(1, int(inputs["max_rounds"]) + 1):
            pair(shift)
            stop = torch.tensor([1 if clock() - began > float(inputs["cap_seconds"]) else 0])
            with unguarded():
                broadcast(stop, 0)  # every rank runs the same number of rounds: rank 0 decides
            if shift >= int(inputs["min_rounds"]) and int(stop.item()):
                break
        out["seed"] = seed
        os.write(pipes["done"], b"d")
        return out

    def benchmark() -> list:
        """The timed all-reduces run in the ranks; the worker's clock must enclose them, and only
        this process can talk to the worker, so a thread here brackets them with harness.begin/end
        while the ranks wait on pipes."""
        world_size = int(inputs["world_size"])
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        stop = threading.Event()
        outcome = {}
        timeout = float(inputs["timeout"])
        deadline = time.monotonic() + timeout

        def gather_bytes(fd: int) -> bool:
            count = 0
            while count < world_size:
                if stop.is_set() or time.monotonic() > deadline:
                    return False
                if select.select([fd], [], [], 0.05)[0]:
                    count += len(os.read(fd, world_size - count))
            return True

        def coordinate() -> None:
            if not gather_bytes(ready_r):
                return
            try:
                harness.begin("allreduce")  # noqa: F821
            except Exception as exc:  # noqa: BLE001 - "not timed" when a correctness test failed
                outcome["error"] = exc
                os.write(go_w, b"s" * world_size)
                return
            os.write(go_w, b"g" * world_size)
            if gather_bytes(done_r):
                harness.end("allreduce")  # noqa: F821

        coordinator = threading.Thread(target=coordinate, daemon=True)
        coordinator.start()
        pipes = {"ready": ready_w, "go": go_r, "done": done_w}
        try:
            results = ranks.spawn(
                bench_rank, world_size, args=(pipes,), timeout=timeout, collective_timeout=timeout + 10
            )
        finally:
            stop.set()
            coordinator.join()
            for fd in (ready_r, ready_w, go_r, go_w, done_r, done_w):
                os.close(fd)
        if "error" in outcome:
            raise outcome["error"]
        return results

    in_flight = {}  # the spawn running now: its tests, and how far each rank got through them

    def spawn_tests(spec: dict) -> list:
        # Anonymous and shared across fork: each rank writes the number of the test it is in.
        progress = mmap.mmap(-1, 2 * spec["world_size"])
        in_flight.update(tests=spec["tests"], progress=progress, world_size=spec["world_size"])
        timeout = float(inputs["timeout"])
        # gloo's own timeout is longer, so that the spawn's deadline names a hang first.
        return ranks.spawn(
            on_rank,
            spec["world_size"],
            args=(spec["tests"], progress),
            timeout=timeout,
            collective_timeout=timeout + 10,
        )

    try:
        if inputs["kind"] == "benchmark":
            return {"ranks": benchmark()}
        return {"runs": [spawn_tests(spec) for spec in inputs["runs"]]}
    except ranks.RankFailed as exc:
        text = str(exc)
        forbidden = re.search(r"forbidden call: ([\w.]+)\(\)", text)
        if forbidden:
            raise harness.forbidden(forbidden.group(1)) from None  # noqa: F821
        if in_flight:
            progress = in_flight["progress"]
            reached = {int.from_bytes(progress[2 * r : 2 * r + 2], "little") for r in range(in_flight["world_size"])}
            names = [in_flight["tests"][i - 1]["what"] for i in sorted(reached) if i > 0]
            if names:
                text += "\n(the ranks were in: " + "; ".join(names) + ")"
        if "did not finish in time" in text:
            state["hung"] = inputs["label"]
            text += (
                "\n(with gloo, dist.send returns only once the receiver has posted the matching recv: if every rank "
                "sends before it receives, nobody receives. Post the send with dist.isend, then recv, then wait on "
                "the send; and check that every recv has a matching send of the same length)"
            )
        if "SIGABRT" in text:
            text += (
                "\n(gloo aborts a process whose recv gets a different number of bytes than the matching send "
                "sent: see the job output for 'Received data size doesn't match'; do sender and receiver agree "
                "on every chunk's length?)"
            )
        raise ranks.RankFailed(text, failures=exc.failures) from None


# --------------------------------------------------------------------------------------------
# check: trusted, compares run()'s output with the exact answers
# --------------------------------------------------------------------------------------------


def _field(output, key: str, where: str):
    if not isinstance(output, dict) or key not in output:
        raise CheckFailed(f"{where}: run() returned no '{key}'; the result is malformed")
    return output[key]


def _list(value, length: int, where: str) -> list:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise CheckFailed(f"{where}: expected {length} entries from run(), got {type(value).__name__}; malformed")
    return list(value)


def _index(flat: int, shape: tuple) -> str:
    if len(shape) == 1:
        return str(flat)
    return str(tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), shape)))


def _compare(value, exact: torch.Tensor, abs_sum, dtype: torch.dtype, where: str, hint: str, world_size: int) -> None:
    """Exact where ``abs_sum`` is None (int64 sums, all-gathers); for float sums, within the rounding
    of any summation order. Says which elements are wrong, so a chunk boundary bug shows as one."""
    if not isinstance(value, torch.Tensor):
        raise CheckFailed(f"{where}: expected a tensor, got {type(value).__name__}")
    if value.dtype != dtype:
        raise CheckFailed(f"{where}: dtype {value.dtype}, expected {dtype} (keep the input's dtype)")
    if tuple(value.shape) != tuple(exact.shape):
        raise CheckFailed(f"{where}: shape {tuple(value.shape)}, expected {tuple(exact.shape)}. {hint}")
    allowed = ""
    if abs_sum is None:
        wrong = (value != exact).reshape(-1)
    else:
        tolerance = (2 * (world_size - 1) * EPS[dtype] * abs_sum).reshape(-1)
        wrong = ~((value.double() - exact).abs().reshape(-1) <= tolerance)  # NaN counts as wrong
    if not bool(wrong.any()):
        return
    bad = wrong.nonzero().reshape(-1)
    first, last = int(bad[0]), int(bad[-1])
    if abs_sum is not None:
        allowed = f" (allowed error {float(tolerance[first]):.3g})"
        relative = ((value.double() - exact).abs() / abs_sum.clamp_min(1e-300)).max().item()
        if relative < 1e-2:  # every element nearly right: rounding, not a lost or doubled chunk
            hint = (
                f"Relative errors up to {relative:.1e} mean lower precision somewhere on the way (bfloat16 or "
                "float16 on the wire, float32 sums of float64): send and add in the tensor's own dtype."
            )
    raise CheckFailed(
        f"{where}: element {_index(first, tuple(value.shape))} is {value.reshape(-1)[first].item()!r}, expected "
        f"{exact.reshape(-1)[first].item()!r}{allowed}; {len(bad)} of {value.numel()} elements are wrong (flat "
        f"indices {first}..{last}). {hint}"
    )


def _check_allreduce(result, t_before: torch.Tensor, exact, abs_sum, where: str, world_size: int) -> torch.Tensor:
    value = _field(result, "value", where)
    returned = result.get("returned")
    if returned not in ("t", "None"):
        if isinstance(value, torch.Tensor) and torch.equal(value, t_before):
            raise CheckFailed(
                f"{where}: t is unchanged and ring_allreduce returned {returned}: it must sum in place (write the "
                "result into t, e.g. t.copy_(result), and return t or None)"
            )
        if "returned_value" not in result:
            raise CheckFailed(f"{where}: ring_allreduce returned a {returned}; return t itself or None")
    hint = (
        "When N is not a multiple of the number of ranks, or smaller than it, split with "
        "torch.tensor_split (chunk i: rank i) so that no element is left out or counted twice."
    )
    _compare(value, exact, abs_sum, t_before.dtype, where, hint, world_size)
    return value


def _check_identical(values: list, where: str) -> None:
    """Every rank must hold the same bits: data-parallel replicas that differ in the last bit drift apart."""
    for rank in range(1, len(values)):
        if torch.equal(values[rank], values[0]):
            continue
        differ = (values[rank] != values[0]).reshape(-1).nonzero().reshape(-1)
        first = int(differ[0])
        raise CheckFailed(
            f"{where}: rank {rank}'s result differs from rank 0's in {len(differ)} of {values[0].numel()} elements "
            f"(e.g. element {first}: {values[rank].reshape(-1)[first].item()!r} vs "
            f"{values[0].reshape(-1)[first].item()!r}), although both are within rounding of the true sum. Every "
            "rank must end with bit-identical tensors: sum each chunk once, on one rank, in one order, then copy "
            "it to the others (reduce-scatter, then all-gather) instead of letting each rank add the same numbers "
            "in its own order"
        )


def _ideal_bytes(op: str, numel: int, world_size: int, element_size: int) -> float:
    phases = 2 if op == AR else 1
    return phases * (world_size - 1) / world_size * numel * element_size


def _check_bytes(op: str, rank_results: list, spec: dict, where: str) -> None:
    world_size = len(rank_results)
    numel = sum(t.numel() for t in spec["tensors"]) if op == AG else spec["tensors"][0].numel()
    element_size = spec["tensors"][0].element_size()
    ideal = _ideal_bytes(op, numel, world_size, element_size)
    sent = [int(_field(r, "bytes", where)) for r in rank_results]
    busiest = max(range(world_size), key=lambda r: sent[r])
    if sent[busiest] <= BYTES_FACTOR * ideal + BYTES_SLACK:
        return
    formula = "2(p-1)/p*N" if op == AR else "(p-1)/p*N"
    raise CheckFailed(
        f"{where}: rank {busiest} sent {sent[busiest]:,} bytes, {sent[busiest] / ideal:.2f}x the ring's "
        f"{formula}*{element_size} = {ideal:,.0f} bytes per rank (allowed: {BYTES_FACTOR:g}x + {BYTES_SLACK} "
        f"bytes; bytes sent by rank: {sent}). In a ring every rank sends one 1/p-sized chunk to its neighbour per "
        "step; sending whole tensors (to one rank and back, or around the ring) costs (p-1)*N elements or more"
    )


def _sums(tensors: list[torch.Tensor]) -> tuple:
    """The exact sum over ranks (int64, or float64 for floats) and, for floats, sum|x| per element."""
    stacked = torch.stack(tensors)
    if stacked.dtype == torch.int64:
        return stacked.sum(0), None
    stacked = stacked.double()
    return stacked.sum(0), stacked.abs().sum(0)


def _check_test(spec: dict, tensors: list[torch.Tensor], results: list, case: dict) -> None:
    """One test of a spawn, given what each rank passed in: every rank's result, then (if the
    case asks) identity across ranks and bytes sent."""
    op, world_size, dtype = spec["op"], len(results), tensors[0].dtype
    if op == AG:
        exact, abs_sum = torch.cat(tensors), None
    else:
        exact, abs_sum = _sums(tensors)
    values = []
    for rank, result in enumerate(results):
        where = f"{spec['what']}, rank {rank}"
        if op == AR:
            values.append(_check_allreduce(result, tensors[rank], exact, abs_sum, where, world_size))
            continue
        value = _field(result, "value", where)
        if value is None:
            raise CheckFailed(f"{where}: {OPS[op]} returned {result.get('returned')}, expected a tensor")
        if op == RS:
            piece = torch.tensor_split(exact, world_size)[rank]
            piece_abs = None if abs_sum is None else torch.tensor_split(abs_sum, world_size)[rank]
            hint = (
                f"Rank {rank} returns chunk {rank} of torch.tensor_split(sum, {world_size}) ({piece.numel()} elements)."
            )
            _compare(value, piece, piece_abs, dtype, where, hint, world_size)
        else:
            hint = "Every rank returns all chunks in rank order, each with its own length (zero included)."
            _compare(value, exact, None, dtype, where, hint, world_size)
    if case.get("identical"):
        _check_identical(values, spec["what"])
    if case.get("count_bytes"):
        _check_bytes(op, results, spec, spec["what"])


def _check_collectives(case: dict, output) -> None:
    runs = _list(_field(output, "runs", case["name"]), len(case["inputs"]["runs"]), case["name"])
    for spec_run, rank_outputs in zip(case["inputs"]["runs"], runs, strict=True):
        world_size, tests = spec_run["world_size"], spec_run["tests"]
        rank_outputs = _list(rank_outputs, world_size, f"{case['name']}: ranks")
        inputs, results = [], []
        for rank, rank_output in enumerate(rank_outputs):
            seed = _field(rank_output, "seed", f"rank {rank}")
            if not isinstance(seed, int) or not 0 <= seed < 2**63:
                raise CheckFailed(f"rank {rank}: run() returned a malformed seed; the result is malformed")
            inputs.append(_rank_inputs([test["tensors"][rank] for test in tests], seed))
            results.append(_list(_field(rank_output, "tests", f"rank {rank}"), len(tests), f"rank {rank}"))
        for index, spec in enumerate(tests):
            tensors = [inputs[rank][index] for rank in range(world_size)]
            _check_test(spec, tensors, [results[rank][index] for rank in range(world_size)], case)


def _check_benchmark(case: dict, output) -> dict:
    inputs = case["inputs"]
    world_size, numel = inputs["world_size"], inputs["tensors"][0].numel()
    rank_results = _list(_field(output, "ranks", "benchmark"), world_size, "benchmark ranks")
    keys = ("student_s", "gloo_s", "bytes", "shift", "bits", "positions", "samples", "sum")
    rounds = len(_field(rank_results[0], "student_s", "benchmark"))
    for rank, result in enumerate(rank_results):
        for key in keys:
            _list(_field(result, key, f"benchmark, rank {rank}"), rounds, f"benchmark, rank {rank}, {key}")
        for key in ("student_s", "gloo_s"):
            if not all(isinstance(v, float) and 0 < v < 1e4 for v in result[key]):
                raise CheckFailed(f"benchmark: rank {rank} reported malformed timings")
    if rounds < inputs["min_rounds"]:
        raise CheckFailed(f"benchmark: only {rounds} timed rounds, expected at least {inputs['min_rounds']}")
    # Every timed output: bit-identical across ranks, and equal to the exact sum where sampled.
    seeds = [_field(result, "seed", f"benchmark, rank {rank}") for rank, result in enumerate(rank_results)]
    if not all(isinstance(seed, int) and 0 <= seed < 2**63 for seed in seeds):
        raise CheckFailed("benchmark: run() returned a malformed seed; the result is malformed")
    exact, abs_sum = _sums([_rank_inputs([t], seeds[rank])[0] for rank, t in enumerate(inputs["tensors"])])
    tolerance = 2 * (world_size - 1) * EPS[torch.float32] * abs_sum
    total_tolerance = float(tolerance.sum()) + 1e-6 * float(abs_sum.sum())
    for r in range(rounds):
        shift = int(rank_results[0]["shift"][r])
        if len({result["bits"][r] for result in rank_results}) != 1:
            raise CheckFailed(f"benchmark: timed call {r + 1}: the ranks' results are not bit-identical")
        for rank, result in enumerate(rank_results):
            source = (result["positions"][r].long() - shift) % numel
            off = (result["samples"][r].double() - exact[source]).abs() > tolerance[source]
            if int(result["shift"][r]) != shift or bool(off.any()):
                raise CheckFailed(f"benchmark: timed call {r + 1}: rank {rank}'s result is wrong")
            if abs(float(result["sum"][r]) - float(exact.sum())) > total_tolerance:
                raise CheckFailed(f"benchmark: timed call {r + 1}: rank {rank}'s result is wrong (its sum differs)")
    # The worker's own clock around the timed region bounds what the ranks may report.
    envelope = case.get("runtime", {}).get("envelopes", {}).get("allreduce")
    if not isinstance(envelope, (int, float)) or envelope <= 0:
        raise CheckFailed("benchmark: the worker did not see the timed region begin and end; result malformed")
    reported = max(sum(result["student_s"]) + sum(result["gloo_s"]) for result in rank_results)
    if reported > envelope * 1.05 + 0.01 or reported < 0.2 * envelope:
        raise CheckFailed(
            f"benchmark: the ranks report {reported:.3f} s of timed calls, but the worker measured "
            f"{envelope:.3f} s around them: the clock was tampered with"
        )
    student = [max(result["student_s"][r] for result in rank_results) for r in range(rounds)]
    gloo = [max(result["gloo_s"][r] for result in rank_results) for r in range(rounds)]
    ratio = statistics.median(s / g for s, g in zip(student, gloo, strict=True))
    element_size = inputs["tensors"][0].element_size()
    ideal = _ideal_bytes(AR, numel, world_size, element_size)
    busiest = max(int(b) for result in rank_results for b in result["bytes"])
    message = (
        f"ring_allreduce took {ratio:.2f}x the time of gloo's all_reduce (median of {rounds} interleaved pairs on "
        f"{world_size} ranks, {numel:,} float32 elements: {statistics.median(student) * 1e3:.1f} ms vs "
        f"{statistics.median(gloo) * 1e3:.1f} ms); the busiest rank sent {busiest / 1e6:.2f} MB per call, "
        f"{busiest / ideal:.2f}x the ring's 2(p-1)/p*N*{element_size} B = {ideal / 1e6:.2f} MB"
    )
    return {"metric": ratio, "message": message}


def check(case: dict, output) -> dict | None:
    """Compare one case's output with the exact answers; raise CheckFailed saying what is wrong."""
    kind = case["inputs"]["kind"]
    if kind == "collectives":
        _check_collectives(case, output)
        return None
    if kind == "benchmark":
        return _check_benchmark(case, output)
    raise CheckFailed(f"internal grader error: unknown case kind {kind!r}")

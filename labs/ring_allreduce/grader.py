"""Grader for the ``ring_allreduce`` lab: all-reduce, reduce-scatter and all-gather over send/recv.

Trust split (lab contract v2, docs/authoring-labs.md): ``cases``, ``call_inputs`` and ``check`` run
in the worker, where the exact sums are computed; ``run.py`` is what runs in the sandbox. Every case
is a distributed case: the worker runs it on 2 to 4 ranks, each in a sandbox of its own that
shares only a loopback network with its peers (``gpu_runner.rankgroup``), and each rank receives
only its own tensors, so a rank can learn its peers' data only by receiving it. Each rank hands its
tensors to the student's function and returns what came out, with the bytes it passed to ``send``;
the worker counts every byte that crossed the network (``network_bytes``), which bounds the
``bytes_sent`` case whatever a rank reports.

The benchmark is a distributed timed case: the worker times each call of ``run.timed`` (every rank's
``ring_allreduce`` on its own fresh tensor from ``call_inputs``) on its own clock, on 4 ranks running
the student's module and, interleaved, on 4 ranks running ``reference.py`` (gloo's own
``all_reduce``) in clean sandboxes the submission never reaches; the metric is the median of the
per-pair ratios, and every timed call's result is checked here through its fingerprints.

Contract (README.md): for ``p`` ranks and a tensor of ``N`` elements, chunk ``i`` is
``torch.tensor_split(t.reshape(-1), p)[i]`` (the first ``N % p`` chunks have one element more)
and belongs to rank ``i``. ``ring_allreduce(t)`` sums ``t`` over the ranks in place, with
bit-identical results on every rank; ``ring_reduce_scatter(t)`` returns rank ``i``'s chunk of the
sum; ``ring_allgather(chunk)`` returns every rank's chunk, concatenated in rank order (chunks may
have any lengths, zero included). The busiest rank may send at most 5% (plus 1 KiB) more than the
ring's ``2(p-1)/p * N`` elements for an all-reduce, or ``(p-1)/p * N`` for either half.
"""

from __future__ import annotations

import torch

from labs.trusted import CheckFailed, check_timed_calls, field, timing_summary

# Per-case limit (seconds) for all of a case's ranks. A correct solution needs well under a second
# for any case on 2 busy cores (the 1e6-element all-reduce on 4 ranks takes ~0.15 s), so 15 s only
# ever trips on a hang; the later cases are then not run.
CASE_TIMEOUT = 15.0
# Benchmark: a timed case on 4 ranks, 1,000,003 float32 elements per rank (not a multiple
# of 4); timed pairs (student, gloo) after warm-up calls. A pair costs 50 to 150 ms on 2 busy cores,
# the worker's drawing and writing of each call's 16 MB of inputs included.
BENCH_WORLD_SIZE = 4
BENCH_NUMEL = 1_000_003
BENCH_CALLS = 20
BENCH_WARMUP = 2
# A timed call's result is compared through its dot product with a random float64 probe: a float32
# sum in any order is off by at most 2(p-1) eps sum|x| per element, far less than 1e-6 of
# sum |probe * sum| over a million elements; one chunk wrong or lost is off by about 1 / sqrt(p) of it.
FINGERPRINT_RTOL = 1e-6
# Advice appended by the worker when a case's ranks hang, or one is aborted by gloo.
HINTS = {
    "hang": "(with gloo, dist.send returns only once the receiver has posted the matching recv: if every rank "
    "sends before it receives, nobody receives. Post the send with dist.isend, then recv, then wait on the send; "
    "and check that every recv has a matching send of the same length)",
    "SIGABRT": "(gloo aborts a process whose recv gets a different number of bytes than the matching send sent: "
    "see the job output for 'Received data size doesn't match'; do sender and receiver agree on every chunk's "
    "length?)",
}
# Bytes: the busiest rank may exceed the ring's per-rank volume by this factor, plus a little for
# control messages (e.g. passing the chunk lengths around before an all-gather). That is checked on
# what each rank reports it passed to send; what crossed the network, counted by the worker for the
# whole case, may exceed the ranks' ideal total by the same factor plus NETWORK_SLACK per test
# (TCP/IP headers and acknowledgements, about 1.5% of a large message, and the barrier between tests).
BYTES_FACTOR = 1.05
BYTES_SLACK = 1024
NETWORK_SLACK = 16 * 1024
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


# name, points, world size, [(op, size or shape, or for an all-gather the chunk lengths, dtype)], checks.
# Sizes 1 and p - 1 leave some ranks with empty chunks; 7 is divisible by none of 2, 3, 4. Cases of
# one world size follow each other, so the worker starts a group of ranks once per size.
# "wide" spreads the values over six decades, so that summing in another order changes the bits.
PLAN = [
    ("allreduce_2_ranks", 15, 2, [(AR, 1, F32), (AR, 7, F64), (AR, 7, I64), (AR, 1000, F32), (AR, 65_537, F64)], {}),
    ("allreduce_3_ranks", 15, 3, [(AR, 1, I64), (AR, 2, F32), (AR, 7, F64), (AR, (3, 5), F32), (AR, 10_007, I64)], {}),
    ("reduce_scatter_3_ranks", 8, 3, [(RS, 1, F32), (RS, 2, I64), (RS, 7, F64), (RS, 1000, F32)], {}),
    ("allgather_3_ranks", 8, 3, [(AG, [3, 2, 2], F64), (AG, [0, 4, 1], I64), (AG, [1, 0, 0], F32)], {}),
    ("identical_on_3_ranks", 5, 3, [(AR, 1003, F32), (AR, 1003, F64)], {"identical": True, "wide": True}),
    ("allreduce_4_ranks", 15, 4, [(AR, 1, F64), (AR, 3, I64), (AR, 7, F32), (AR, 4099, F64), (AR, 1_000_000, F32)], {}),
    ("reduce_scatter_4_ranks", 7, 4, [(RS, 3, F64), (RS, 7, I64), (RS, 10_001, F32)], {}),
    (
        "allgather_4_ranks",
        7,
        4,
        [(AG, [1, 0, 0, 0], F32), (AG, [5, 0, 3, 2], I64), (AG, [25_001, 25_001, 25_001, 25_000], F64)],
        {},
    ),
    ("identical_on_4_ranks", 5, 4, [(AR, 4099, F32)], {"identical": True, "wide": True}),
    (
        "bytes_sent",
        15,
        4,
        [(AR, 100_003, F32), (RS, 100_003, F32), (AG, [25_001, 25_001, 25_001, 25_000], F32)],
        {"count_bytes": True},
    ),
]


def cases(seed: int, *, device: str = "cpu") -> list[dict]:
    """Every hidden test, generated from the secret seed so inputs cannot be memorised. A case's
    ``tests`` (every rank's tensors) stay in the worker; rank ``r`` receives ``inputs[r]``, its own."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name, points, world_size, plan, checks in PLAN:
        tests = [
            _gather_test(gen, world_size, size, dtype)
            if op == AG
            else _reduce_test(gen, op, world_size, size, dtype, wide=checks.get("wide", False))
            for op, size, dtype in plan
        ]
        inputs = [
            {"tests": [{"op": t["op"], "what": t["what"], "tensor": t["tensors"][rank]} for t in tests]}
            for rank in range(world_size)
        ]
        out.append(
            {
                "name": name,
                "points": points,
                "world_size": world_size,
                "timeout": CASE_TIMEOUT,
                "hints": HINTS,
                "inputs": inputs,
                "tests": tests,
                **checks,
            }
        )
    out.append(_benchmark_case())
    return out


def _benchmark_case() -> dict:
    """The timed case: nothing secret in it; each call's tensors come from ``call_inputs``."""
    return {
        "name": "benchmark",
        "points": 0,
        "inputs": {"kind": "benchmark", "numel": BENCH_NUMEL},
        "timed": {
            "calls": BENCH_CALLS,
            "warmup": BENCH_WARMUP,
            "reference": True,
            "world_size": BENCH_WORLD_SIZE,
            "outputs": {"out": [BENCH_NUMEL]},
            "dtype": "float64",  # the probes': see FINGERPRINT_RTOL
        },
    }


def call_inputs(case: dict, seed: int) -> list[dict]:
    """One timed call's fresh inputs, one dict per rank: each rank receives only its own tensor."""
    gen = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(case["inputs"]["numel"], generator=gen)} for _ in range(BENCH_WORLD_SIZE)]


# --------------------------------------------------------------------------------------------
# check: trusted, compares run.py's output with the exact answers
# --------------------------------------------------------------------------------------------


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
    value = field(result, "value", where)
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
    sent = [int(field(r, "bytes", where)) for r in rank_results]
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
        value = field(result, "value", where)
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
    tests, world_size = case["tests"], case["world_size"]
    rank_outputs = _list(output, world_size, f"{case['name']}: ranks")
    results = [
        _list(field(rank_output, "tests", f"rank {rank}"), len(tests), f"rank {rank}")
        for rank, rank_output in enumerate(rank_outputs)
    ]
    for index, spec in enumerate(tests):
        _check_test(spec, spec["tensors"], [results[rank][index] for rank in range(world_size)], case)
    if case.get("count_bytes"):
        _check_network(case)


def _check_network(case: dict) -> None:
    """What crossed the network in the whole case, counted by the worker, against the ring's total."""
    world_size = case["world_size"]
    sent = case["runtime"]["network_bytes"]
    if sent is None:  # an unsandboxed development worker has no private network to count
        return
    ideal = 0.0
    for spec in case["tests"]:
        numel = sum(t.numel() for t in spec["tensors"]) if spec["op"] == AG else spec["tensors"][0].numel()
        ideal += world_size * _ideal_bytes(spec["op"], numel, world_size, spec["tensors"][0].element_size())
    allowed = BYTES_FACTOR * ideal + NETWORK_SLACK * len(case["tests"])
    if sent > allowed:
        raise CheckFailed(
            f"bytes_sent: the {world_size} ranks sent each other {sent:,} bytes over the network in this case, "
            f"{sent / ideal:.2f}x the ring's {ideal:,.0f} (allowed: {allowed:,.0f}, headers included). In a ring "
            "every rank sends one 1/p-sized chunk to its neighbour per step"
        )
    by_rank = case["runtime"].get("network_bytes_by_rank") or []
    allowed = BYTES_FACTOR * ideal / world_size + NETWORK_SLACK * len(case["tests"])
    for rank, rank_sent in enumerate(by_rank):
        if rank_sent > allowed:
            raise CheckFailed(
                f"bytes_sent: rank {rank} sent {rank_sent:,} bytes over the network in this case, "
                f"{rank_sent * world_size / ideal:.2f}x the ring's {ideal / world_size:,.0f} per rank (allowed: "
                f"{allowed:,.0f}, headers included; bytes sent by rank: {by_rank}). In a ring every rank sends the "
                "same: one 1/p-sized chunk to its neighbour per step"
            )


def _timed_sums(inputs: list[dict]) -> dict[str, torch.Tensor]:
    """Every rank's expected result of one timed call: the sum of the ranks' tensors."""
    total = sum(rank_inputs["x"].double() for rank_inputs in inputs)
    return {f"out@{rank}": total for rank in range(len(inputs))}


def _check_benchmark(case: dict, output) -> dict:
    check_timed_calls(
        case,
        output,
        _timed_sums,
        rtol=FINGERPRINT_RTOL,
        atol=0.0,
        what="ring_allreduce in timed call",
    )
    for number, fingerprint in enumerate(output["calls"]):
        if len({fingerprint[f"out@{rank}"] for rank in range(BENCH_WORLD_SIZE)}) != 1:
            raise CheckFailed(
                f"benchmark: timed call {number + 1}: the ranks' results are not bit-identical (their fingerprints "
                "differ); every rank must end with the same bits"
            )
    summary = timing_summary(case)
    numel = case["inputs"]["numel"]
    return {
        "metric": summary["ratio"],
        "message": f"ring_allreduce on {BENCH_WORLD_SIZE} ranks, {numel:,} float32 elements, against gloo's "
        f"all_reduce: {summary['message']}",
    }


def check(case: dict, output) -> dict | None:
    """Compare one case's output with the exact answers; raise CheckFailed saying what is wrong."""
    if "timed" in case:
        return _check_benchmark(case, output)
    _check_collectives(case, output)
    return None

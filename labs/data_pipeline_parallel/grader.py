"""Grader for the ``data_pipeline_parallel`` lab: bucketed data parallelism and a GPipe step.

Trust split (lab contract v2, docs/authoring-labs.md): ``cases``, ``call_inputs`` and ``check`` run
in the worker and hold every reference (single-process training, the sequential model's loss and
gradients, the expected buckets); ``run.py`` is what runs in the sandbox. Every correctness case is
a distributed case: the worker runs it on 2 to 4 ranks, each in a sandbox of its own that shares
only a loopback network with its peers (``gpu_runner.rankgroup``), and each rank receives only its
own inputs: its own initial weights and rows of the batch (data parallelism), its own stage's
weights, and the microbatches' inputs on rank 0 and targets on the last rank only (pipelining). So
a rank learns its peers' weights, gradients or activations only by receiving them, and ``check``
gets the list of what each rank returned.

The references are plain single-process PyTorch: what data parallelism and pipelining must
reproduce exactly, only faster.

The pipeline benchmark is a distributed timed case: the worker times each call of ``run.timed``
(``gpipe_step`` on both ranks, on fresh microbatches from ``call_inputs``: the inputs to rank 0, the
targets to rank 1) on its own clock, on 2 ranks running the student's module and, interleaved, on 2
ranks running ``reference.py`` in clean sandboxes: each stage's own compute for every microbatch,
with no messages, the "ideal" of step / ideal. The ratio is computed here from the worker's times,
and every timed call's loss and gradients are checked through their fingerprints.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from labs.trusted import CheckFailed, assert_close, check_timed_calls, field, single_thread, timing_summary

# Float64 throughout: averaging gradients over ranks or summing microbatches changes only the
# order of additions, so 1e-6 (the catalog's contract) is loose for honest code and far too tight
# for a gradient that is not divided by the world size or misses a term.
DDP_RTOL, DDP_ATOL = 1e-6, 1e-9
# All ranks apply the same averaged gradient, so they must agree to rounding.
AGREE_RTOL, AGREE_ATOL = 1e-10, 1e-12
PIPE_RTOL, PIPE_ATOL = 1e-8, 1e-12
# Per case, for all of its ranks (the ranks are started and have joined their group before it).
# Honest cases take 0.1 to 0.5 s on 2 cores with a little other load, and at most 3 s with 8
# runnable processes on 2 cores (every message needs the peer process scheduled, so the pipeline
# cases suffer most); a rank's first out.backward(grad) also imports sympy (run.py), 1 to 4 s of
# CPU. A hang costs this once: the worker then runs no later distributed case.
CASE_TIMEOUT_SECONDS = 20.0
# The lab's advice, added by the worker to the message of a case that hangs or whose rank gloo
# aborts (SIGABRT: a recv of another size than the matching send, ranks' collectives of different sizes).
DDP_HINTS = {
    "hang": "(every rank must make the same collective calls in the same order: the constructor's broadcasts, "
    "then one all_reduce per bucket in every backward, with the same buckets on every rank)",
    "SIGABRT": "(gloo aborts a process whose collective gets a tensor of another size than its peers': do all "
    "ranks build the same buckets, in the same order?)",
}
PIPE_HINTS = {
    "hang": "(every send needs its recv on the neighbouring rank, in the same order: in forward a middle stage "
    "receives from rank - 1 and sends to rank + 1, in backward the reverse; draw the messages of 3 ranks and 2 "
    "microbatches)",
    "SIGABRT": "(gloo aborts a process whose recv gets a different number of bytes than the matching send sent: "
    "see the job output for 'Received data size doesn't match'; does every receiver know the shape it receives?)",
}
DATA_FEATURES = 64
DDP_GLOBAL_BATCH = 48  # divisible by 2, 3 and 4: every rank gets the same number of rows
DDP_STEPS, DDP_LR, DDP_MOMENTUM = 5, 0.1, 0.9
# The bucket cases: 5 buckets of 594, 800, 1280, 40 and 2560 float64 values (see _buckets).
BUCKET_SIZES, BUCKET_CAP_MB = [64, 40, 32, 24, 16, 10], 0.008
BENCH_WIDTHS, BENCH_STAGES = [256] * 5, [[0, 1], [2, 3]]
# The benchmark: 2 stages of two 256-wide layers, 8 microbatches of 32 rows; 20 timed pairs
# (student, reference) after 3 warm-up calls, each call on fresh microbatches.
BENCH_MICROBATCHES, BENCH_ROWS = 8, 32
BENCH_CALLS, BENCH_WARMUP = 20, 3
# An honest GPipe step cannot beat m stage-passes of compute (ratio m / (m + p - 1)). A median
# under this share of that floor means the machine's load skewed the reference's calls: not a
# figure to rank (the case still passes if every answer was right).
FLOOR_SLACK = 0.8


# --------------------------------------------------------------------------------------------
# cases: trusted, from the job's secret seed
# --------------------------------------------------------------------------------------------


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with tanh between them, in float64 (as run.py builds them)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).double()


def _stage(widths: list[int], layer_ids: list[int]) -> nn.Sequential:
    """One pipeline stage: the model's layers ``layer_ids``, tanh after all but the model's last."""
    last = len(widths) - 2
    layers: list[nn.Module] = []
    for layer in layer_ids:
        layers.append(nn.Linear(widths[layer], widths[layer + 1]))
        if layer < last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).double()


def _random_params(gen: torch.Generator, model: nn.Module) -> list[torch.Tensor]:
    """Weights like nn.Linear's scale (1/sqrt(fan_in)), drawn from the case's generator."""
    params = []
    for p in model.parameters():
        fan_in = p.shape[1] if p.dim() == 2 else p.shape[0]
        params.append(torch.rand(p.shape, generator=gen, dtype=torch.float64).mul_(2).sub_(1) / math.sqrt(fan_in))
    return params


def _load(model: nn.Module, params: list[torch.Tensor]) -> nn.Module:
    with torch.no_grad():
        for p, value in zip(model.parameters(), params, strict=True):
            p.copy_(value)
    return model


def _classification_data(gen: torch.Generator, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs labelled by a random linear teacher into 10 classes (nothing to download)."""
    x = torch.randn(rows, DATA_FEATURES, generator=gen, dtype=torch.float64)
    teacher = torch.randn(DATA_FEATURES, 10, generator=gen, dtype=torch.float64)
    return x, (x @ teacher).argmax(dim=1)


def _sgd_step(params: list[torch.Tensor], buffers: list[torch.Tensor | None], lr: float, momentum: float) -> None:
    """torch.optim.SGD's update with momentum (dampening 0), written out: run.py does the same."""
    with torch.no_grad():
        for i, p in enumerate(params):
            buffers[i] = p.grad.clone() if buffers[i] is None else buffers[i].mul_(momentum).add_(p.grad)
            p.sub_(lr * buffers[i])


def _buckets(numels: list[int], cap_mb: float, element_size: int = 8) -> list[list[int]]:
    """The README's bucket rule, as parameter indices: walk the parameters in reverse order and
    start a new bucket when the next one would push a non-empty bucket past the cap."""
    cap_bytes = cap_mb * 1024 * 1024
    buckets: list[list[int]] = []
    current: list[int] = []
    size = 0
    for index in reversed(range(len(numels))):
        nbytes = numels[index] * element_size
        if current and size + nbytes > cap_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(index)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets


def _rows(world: int, rank: int, total: int) -> slice:
    """Rank ``rank``'s rows of a global batch of ``total`` rows: its own contiguous share."""
    per = total // world
    return slice(rank * per, (rank + 1) * per)


def _ddp_init_case(gen: torch.Generator) -> dict:
    sizes, world, rows = [DATA_FEATURES, 24, 10], 3, 6
    model = _mlp(sizes)
    inits = [_random_params(gen, model) for _ in range(world)]
    xs = _classification_data(gen, world * rows)[0].reshape(world, rows, -1)
    _load(model, inits[0])
    with torch.no_grad():
        outs = [model(xs[r]) for r in range(world)]
    return {
        "name": "ddp_broadcast_init",
        "points": 10,
        "world_size": world,
        # Each rank gets only its own initial weights: it can hold rank 0's only by receiving them.
        # (A rank's tensors are clones: a view would carry the whole batch's storage with it.)
        "inputs": [{"kind": "ddp_init", "sizes": sizes, "init": inits[r], "x": xs[r].clone()} for r in range(world)],
        "kind": "ddp_init",
        "hints": DDP_HINTS,
        "names": [n for n, _ in model.named_parameters()],
        "expected_params": inits[0],
        "expected_out": outs,
    }


def _ddp_train_case(name: str, gen: torch.Generator, *, world: int, cap_mb: float | None) -> dict:
    sizes = [DATA_FEATURES, 32, 32, 10]
    model = _mlp(sizes)
    inits = [_random_params(gen, model) for _ in range(world)]
    x, y = _classification_data(gen, DDP_STEPS * DDP_GLOBAL_BATCH)
    xs, ys = x.reshape(DDP_STEPS, DDP_GLOBAL_BATCH, -1), y.reshape(DDP_STEPS, DDP_GLOBAL_BATCH)
    _load(model, inits[0])
    params = list(model.parameters())
    buffers: list[torch.Tensor | None] = [None] * len(params)
    for step in range(DDP_STEPS):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(xs[step]), ys[step]).backward()
        _sgd_step(params, buffers, DDP_LR, DDP_MOMENTUM)
    # Each rank gets only its own rows of every step's batch (and its own initial weights): the
    # gradient of the whole batch exists only once the ranks have averaged theirs.
    shards = [_rows(world, r, DDP_GLOBAL_BATCH) for r in range(world)]
    return {
        "name": name,
        "points": 15,
        "world_size": world,
        "inputs": [
            {
                "kind": "ddp_train",
                "sizes": sizes,
                "init": inits[r],
                "x": xs[:, shards[r]].clone(),
                "y": ys[:, shards[r]].clone(),
                "lr": DDP_LR,
                "momentum": DDP_MOMENTUM,
                "bucket_cap_mb": cap_mb,
            }
            for r in range(world)
        ],
        "kind": "ddp_train",
        "hints": DDP_HINTS,
        "bucket_cap_mb": cap_mb,
        "names": [n for n, _ in model.named_parameters()],
        "expected_params": [p.detach().clone() for p in model.parameters()],
    }


def _ddp_buckets_case(name: str, gen: torch.Generator, *, world: int) -> dict:
    model = _mlp(BUCKET_SIZES)
    inits = [_random_params(gen, model) for _ in range(world)]
    x, y = _classification_data(gen, 8 * world)
    numels = [p.numel() for p in model.parameters()]
    buckets = _buckets(numels, BUCKET_CAP_MB)
    shards = [_rows(world, r, x.shape[0]) for r in range(world)]
    return {
        "name": name,
        "points": 10,
        "world_size": world,
        "inputs": [
            {
                "kind": "ddp_buckets",
                "sizes": BUCKET_SIZES,
                "init": inits[r],
                "x": x[shards[r]].clone(),
                "y": y[shards[r]].clone(),
                "bucket_cap_mb": BUCKET_CAP_MB,
            }
            for r in range(world)
        ],
        "kind": "ddp_buckets",
        "hints": DDP_HINTS,
        "sizes": BUCKET_SIZES,
        "bucket_cap_mb": BUCKET_CAP_MB,
        "bucket_numels": [sum(numels[i] for i in bucket) for bucket in buckets],
        # Buckets holding neither parameter of the first layer are complete before backward reaches
        # the first layer, so their all-reduce must already have been started by then.
        "launchable_early": sum(1 for bucket in buckets if 0 not in bucket and 1 not in bucket),
    }


def _pipeline_reference(widths, stages, weights, xs, ys) -> tuple[float, list[list[torch.Tensor]]]:
    """Loss and per-stage gradients of the whole model run sequentially, microbatch by microbatch."""
    modules = [_load(_stage(widths, layer_ids), w) for layer_ids, w in zip(stages, weights, strict=True)]
    model = nn.Sequential(*modules)
    m = len(xs)
    total = 0.0
    with single_thread():
        for x, y in zip(xs, ys, strict=True):
            loss = F.mse_loss(model(x), y) / m
            loss.backward()
            total += loss.item()
    return total, [[p.grad.detach().clone() for p in module.parameters()] for module in modules]


def _stage_inputs(rank: int, world: int, *, x: torch.Tensor, y: torch.Tensor) -> dict:
    """What one rank's stage gets of the microbatches: the inputs on rank 0, the targets on the last."""
    mine = {}
    if rank == 0:
        mine["x"] = x
    if rank == world - 1:
        mine["y"] = y
    return mine


def _gpipe_case(name: str, gen, *, widths, stages, microbatches: int, rows: int, schedule: bool = False) -> dict:
    weights = [_random_params(gen, _stage(widths, layer_ids)) for layer_ids in stages]
    xs = torch.randn(microbatches, rows, widths[0], generator=gen, dtype=torch.float64)
    ys = torch.randn(microbatches, rows, widths[-1], generator=gen, dtype=torch.float64)
    loss, grads = _pipeline_reference(widths, stages, weights, xs, ys)
    world = len(stages)
    return {
        "name": name,
        "points": 10,
        "world_size": world,
        # Each rank gets only its own stage's weights, and the microbatches' inputs (rank 0) or
        # targets (the last rank): activations and their gradients must cross the network.
        "inputs": [
            {
                "kind": "gpipe",
                "widths": widths,
                "layers": stages[r],
                "weights": weights[r],
                "microbatches": microbatches,
                "schedule": schedule,
                **_stage_inputs(r, world, x=xs, y=ys),
            }
            for r in range(world)
        ],
        "kind": "gpipe",
        "hints": PIPE_HINTS,
        "widths": widths,
        "stages": stages,
        "microbatches": microbatches,
        "check": "schedule" if schedule else "values",
        "names": [[n for n, _ in _stage(widths, layer_ids).named_parameters()] for layer_ids in stages],
        "expected_loss": loss,
        "expected_grads": grads,
    }


def _benchmark_case(gen) -> dict:
    """The timed case: the static weights (every call sees them); each call's microbatches come
    from ``call_inputs``."""
    weights = [_random_params(gen, _stage(BENCH_WIDTHS, layer_ids)) for layer_ids in BENCH_STAGES]
    names = [[n for n, _ in _stage(BENCH_WIDTHS, ids).named_parameters()] for ids in BENCH_STAGES]
    shapes = {f"grad_{n}": list(p.shape) for n, p in _stage(BENCH_WIDTHS, BENCH_STAGES[0]).named_parameters()}
    return {
        "name": "pipeline_benchmark",
        "points": 0,
        "inputs": {
            "kind": "benchmark",
            "widths": BENCH_WIDTHS,
            "stages": BENCH_STAGES,
            "weights": weights,
            "microbatches": BENCH_MICROBATCHES,
            "rows": BENCH_ROWS,
        },
        "timed": {
            "calls": BENCH_CALLS,
            "warmup": BENCH_WARMUP,
            "reference": True,
            "world_size": len(BENCH_STAGES),
            # Every stage has the same parameter shapes: one probe per name serves both ranks.
            "outputs": {**shapes, "loss": [1]},
            "dtype": "float64",
        },
        "names": names,
    }


def call_inputs(case: dict, seed: int) -> list[dict]:
    """One timed call's fresh microbatches, one dict per rank: the inputs ``x`` for rank 0, the
    targets ``y`` for the last rank (a rank gets only its own)."""
    gen = torch.Generator().manual_seed(seed)
    inputs = case["inputs"]
    widths, shape = inputs["widths"], (inputs["microbatches"], inputs["rows"])
    x = torch.randn(*shape, widths[0], generator=gen, dtype=torch.float64)
    y = torch.randn(*shape, widths[-1], generator=gen, dtype=torch.float64)
    world = len(inputs["stages"])
    return [_stage_inputs(r, world, x=x, y=y) for r in range(world)]


# The cases run in this order, each on a group of ranks that the worker starts for a run of cases of
# the same world size (a process per rank: about a second of CPU each, torch's import). Grouped by
# world size, they need 4 groups instead of 9; the two cases where a middle stage can hang (3 and 4
# pipeline stages) come last, because after a hang the worker runs no later distributed case.
ORDER = (
    "ddp_train_2_ranks",
    "ddp_buckets",
    "gpipe_2_ranks",
    "gpipe_schedule",
    "ddp_train_4_ranks_small_buckets",
    "ddp_broadcast_init",
    "ddp_overlap",
    "gpipe_3_ranks",
    "gpipe_4_ranks_3_microbatches",
    "pipeline_benchmark",
)


def cases(seed: int, *, device: str = "cpu") -> list[dict]:
    """Every hidden test, generated from the secret seed so inputs cannot be memorised."""
    gen = torch.Generator().manual_seed(seed)
    with single_thread():
        out = [
            _ddp_init_case(gen),
            _ddp_train_case("ddp_train_2_ranks", gen, world=2, cap_mb=None),
            _ddp_train_case("ddp_train_4_ranks_small_buckets", gen, world=4, cap_mb=0.01),
            _ddp_buckets_case("ddp_buckets", gen, world=2),
            _ddp_buckets_case("ddp_overlap", gen, world=3),
            _gpipe_case("gpipe_2_ranks", gen, widths=[12, 20, 6], stages=[[0], [1]], microbatches=4, rows=5),
            _gpipe_case(
                "gpipe_3_ranks",
                gen,
                widths=[10, 18, 14, 9, 7, 5],
                stages=[[0, 1], [2, 3], [4]],
                microbatches=4,
                rows=3,
            ),
            _gpipe_case(
                "gpipe_4_ranks_3_microbatches",
                gen,
                widths=[8, 16, 12, 11, 4],
                stages=[[0], [1], [2], [3]],
                microbatches=3,
                rows=4,
            ),
            _gpipe_case(
                "gpipe_schedule", gen, widths=[9, 13, 7], stages=[[0], [1]], microbatches=4, rows=4, schedule=True
            ),
            _benchmark_case(gen),
        ]
    for case in out:
        if "world_size" in case:
            case["timeout"] = CASE_TIMEOUT_SECONDS
    by_name = {case["name"]: case for case in out}
    return [by_name[name] for name in ORDER]


# --------------------------------------------------------------------------------------------
# check: trusted, compares run.py's output with the references
# --------------------------------------------------------------------------------------------


def _per_rank(output, world: int) -> list[dict]:
    """The ranks' results, in rank order (the worker's list of what each rank's ``run`` returned)."""
    if not isinstance(output, (list, tuple)) or len(output) != world:
        raise CheckFailed(f"expected one result from each of {world} ranks, got {type(output).__name__}; malformed")
    for rank, part in enumerate(output):
        if not isinstance(part, dict):
            raise CheckFailed(f"rank {rank} returned {type(part).__name__}; the result is malformed")
    return list(output)


def _tensors(values, count: int, what: str) -> list[torch.Tensor]:
    if not isinstance(values, (list, tuple)) or len(values) != count:
        raise CheckFailed(f"{what}: expected {count} tensors, got {type(values).__name__}; the result is malformed")
    return list(values)


def _check_ddp_init(case: dict, output) -> None:
    names, world = case["names"], case["world_size"]
    for rank, part in enumerate(_per_rank(output, world)):
        params = _tensors(field(part, "params", f"rank {rank}"), len(names), f"rank {rank}'s parameters")
        for name, got, want in zip(names, params, case["expected_params"], strict=True):
            if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.dtype != want.dtype:
                raise CheckFailed(
                    f"after MyDDP(model), rank {rank}'s parameter '{name}' is not a {want.dtype} tensor of shape "
                    f"{tuple(want.shape)}: keep the module's own parameters, do not replace or convert them"
                )
            if not torch.equal(got, want):
                diff = (got - want).abs().max().item()
                whose = "rank 0's own" if rank == 0 else "rank 0's"
                raise CheckFailed(
                    f"after MyDDP(model) on {world} ranks, rank {rank}'s parameter '{name}' is not {whose} "
                    f"initial value (max abs difference {diff:.3g}): the constructor must broadcast every "
                    "parameter from rank 0 (dist.broadcast(p.data, src=0)) so all ranks start from the same model"
                )
        assert_close(
            field(part, "out", f"rank {rank}"),
            case["expected_out"][rank],
            what=f"rank {rank}: MyDDP(model)(x) must return model(x)",
            rtol=1e-12,
            atol=1e-12,
        )


def _check_ddp_train(case: dict, output) -> None:
    names, world, cap = case["names"], case["world_size"], case["bucket_cap_mb"]
    parts = _per_rank(output, world)
    finals = [
        _tensors(field(p, "params", f"rank {r}"), len(names), f"rank {r}'s parameters") for r, p in enumerate(parts)
    ]
    setting = (
        f"{DDP_STEPS} SGD steps (lr {DDP_LR}, momentum {DDP_MOMENTUM}) on {world} ranks, "
        f"{DDP_GLOBAL_BATCH // world} rows each, "
        + ("default bucket_cap_mb" if cap is None else f"bucket_cap_mb={cap}")
    )
    for rank in range(1, world):
        for name, mine, theirs in zip(names, finals[rank], finals[0], strict=True):
            try:
                assert_close(mine, theirs, what=f"'{name}'", rtol=AGREE_RTOL, atol=AGREE_ATOL)
            except CheckFailed as exc:
                raise CheckFailed(
                    f"after {setting}, rank {rank}'s parameters differ from rank 0's: {exc}. All ranks must hold "
                    "the same model: start from rank 0's weights and apply the same averaged gradient everywhere"
                ) from None
    for name, got, want in zip(names, finals[0], case["expected_params"], strict=True):
        try:
            assert_close(got, want, what=f"'{name}'", rtol=DDP_RTOL, atol=DDP_ATOL)
        except CheckFailed as exc:
            raise CheckFailed(
                f"after {setting}, the parameters differ from single-process training on all "
                f"{DDP_GLOBAL_BATCH} rows: {exc}. Each gradient must be the average over ranks (all-reduce "
                "the sum, then divide by the world size), in place in p.grad by the time backward() returns"
            ) from None


def _check_ddp_buckets(case: dict, output) -> None:
    world, cap = case["world_size"], case["bucket_cap_mb"]
    part = _per_rank(output, world)[0]
    setting = f"one backward on {world} ranks, model {case['sizes']}, bucket_cap_mb={cap}"
    calls = field(part, "calls", "rank 0")
    expected = case["bucket_numels"]
    if not isinstance(calls, list) or not all(isinstance(n, int) for n in calls):
        raise CheckFailed("the recorded all_reduce calls are malformed")
    if case["name"] == "ddp_buckets":
        if not calls:
            raise CheckFailed(
                f"{setting}: no dist.all_reduce call was seen during backward. The grader counts calls of "
                "torch.distributed.all_reduce made while loss.backward() runs: call it as dist.all_reduce(...) "
                "(not a name imported with 'from torch.distributed import ...'), from your gradient hooks"
            )
        if sorted(calls) != sorted(expected):
            raise CheckFailed(
                f"{setting}: backward made {len(calls)} all_reduce calls of {calls} elements; expected "
                f"{len(expected)}, one per bucket, of {expected} elements. Pack the gradients into buckets of "
                "at most bucket_cap_mb (README: walk the parameters in reverse order, start a new bucket when "
                "the next parameter would push a non-empty bucket past the cap) and all-reduce each bucket once"
            )
        return
    early, at_first = case["launchable_early"], field(part, "at_first_layer", "rank 0")
    if not isinstance(at_first, int):
        raise CheckFailed(f"{setting}: the first layer's gradient was never computed; the result is malformed")
    if at_first < early:
        raise CheckFailed(
            f"{setting}: when backward reached the first layer, {at_first} all_reduce calls had been made, but "
            f"{early} buckets were already complete (of {len(expected)}). Start each bucket's all_reduce from a "
            "gradient hook as soon as its last gradient arrives (e.g. register_post_accumulate_grad_hook), so "
            "communication overlaps the rest of backward, not after backward has finished"
        )


def _check_stage_grads(case: dict, parts: list[dict], expected: list[list[torch.Tensor]], setting: str) -> None:
    for rank, part in enumerate(parts):
        names = case["names"][rank]
        got = _tensors(field(part, "grads", f"rank {rank}"), len(names), f"rank {rank}'s gradients")
        for name, value, want in zip(names, got, expected[rank], strict=True):
            if value is None:
                hint = (
                    "the last stage must call backward on its loss"
                    if rank == len(parts) - 1
                    else f"rank {rank} must receive d(loss)/d(its output) from rank {rank + 1} and call "
                    "output.backward(that gradient)"
                )
                raise CheckFailed(f"{setting}: stage {rank} (rank {rank}): '{name}'.grad is None; {hint}")
            assert_close(
                value,
                want,
                what=f"{setting}: stage {rank} (rank {rank}) gradient of '{name}'",
                rtol=PIPE_RTOL,
                atol=PIPE_ATOL,
            )


def _check_loss(value, want: float, what: str) -> None:
    if not isinstance(value, float):
        raise CheckFailed(f"{what}: the last rank's gpipe_step returned {value!r}, expected the loss (a float)")
    if not math.isclose(value, want, rel_tol=PIPE_RTOL, abs_tol=PIPE_ATOL):
        raise CheckFailed(
            f"{what}: loss {value:.12g}, expected {want:.12g} (the mean over microbatches of "
            "F.mse_loss(output, target), as the sequential model gives)"
        )


def _check_gpipe(case: dict, output) -> None:
    world, m = case["world_size"], case["microbatches"]
    parts = _per_rank(output, world)
    setting = f"gpipe_step on {world} ranks with {m} microbatches"
    if case["check"] == "schedule":
        for rank, part in enumerate(parts):
            before = field(part, "before_first_backward", f"rank {rank}")
            if before is None:
                raise CheckFailed(f"{setting}: stage {rank} never ran a backward pass: its weights got no gradient")
            if before != m:
                raise CheckFailed(
                    f"{setting}: stage {rank} ran {before} forward passes before its first backward; GPipe runs "
                    f"the forward of all {m} microbatches first, then their backward, so the stages work on "
                    "different microbatches at the same time"
                )
        return
    _check_loss(field(parts[-1], "loss", f"rank {world - 1}"), case["expected_loss"], setting)
    _check_stage_grads(case, parts, case["expected_grads"], setting)


def _timed_expected(case: dict, inputs: list[dict]) -> dict[str, torch.Tensor]:
    """What every rank of one timed call must hold: the sequential model's gradients of its stage,
    and the loss on the last rank (0 on the others). ``inputs``: the call's, one dict per rank."""
    static = case["inputs"]
    x, y = inputs[0]["x"], inputs[-1]["y"]
    loss, grads = _pipeline_reference(static["widths"], static["stages"], static["weights"], x, y)
    last = len(static["stages"]) - 1
    expected = {}
    for rank, names in enumerate(case["names"]):
        expected[f"loss@{rank}"] = torch.tensor([loss if rank == last else 0.0], dtype=torch.float64)
        for name, grad in zip(names, grads[rank], strict=True):
            expected[f"grad_{name}@{rank}"] = grad
    return expected


def _check_benchmark(case: dict, output) -> dict:
    inputs = case["inputs"]
    world, m = len(inputs["stages"]), inputs["microbatches"]
    check_timed_calls(
        case,
        output,
        lambda call: _timed_expected(case, call),
        rtol=PIPE_RTOL,
        atol=PIPE_ATOL,
        what="gpipe_step in timed call",
    )
    summary = timing_summary(case)
    runtime = case["runtime"]
    bubble = (m + world - 1) / m
    ratio = summary["ratio"] / bubble  # the median of step / (bubble x reference), pair by pair
    floor = m / (m + world - 1)
    step_ms = summary["seconds"] * 1e3
    ref_ms = sorted(runtime["reference_seconds"])[len(runtime["reference_seconds"]) // 2] * 1e3
    figures = (
        f"step / ideal = {ratio:.3f}: GPipe step {step_ms:.1f} ms; ideal {bubble:.3f} x {ref_ms:.1f} ms = "
        f"{bubble * ref_ms:.1f} ms ((m + p - 1) / m x the stages' own compute for all {m} microbatches, no "
        f"messages); timing: {summary['message']}"
    )
    sent = runtime.get("network_bytes")
    if isinstance(sent, list) and sent:
        figures += f"; your ranks sent each other {sorted(sent)[len(sent) // 2]} bytes per step (median)"
    if ratio < FLOOR_SLACK * floor:
        # No step can beat its stages' compute: the machine's load skewed the reference's calls;
        # the answers were right, so the case passes, unranked.
        return {
            "message": f"{figures}; step / ideal is below {floor:.3f} (one stage's compute alone): not believable, "
            "so this submission is not ranked"
        }
    return {
        "metric": ratio,
        "message": f"{figures}. A schedule without overlap scores at least {m * world / (m + world - 1):.2f}.",
    }


def _network(case: dict) -> dict | None:
    """What the worker counted on the ranks' network during a case, for the student's information."""
    sent = case.get("runtime", {}).get("network_bytes")
    if not isinstance(sent, int):
        return None  # not counted (a development worker without a network of the group's own)
    return {"message": f"the {case['world_size']} ranks sent each other {sent} bytes (headers included)"}


def check(case: dict, output) -> dict | None:
    """Compare one case's output (the list of what each rank returned) with the trusted references;
    raise CheckFailed saying what is wrong."""
    if "timed" in case:
        return _check_benchmark(case, output)
    kind = case["kind"]
    if kind == "ddp_init":
        _check_ddp_init(case, output)
    elif kind == "ddp_train":
        _check_ddp_train(case, output)
    elif kind == "ddp_buckets":
        _check_ddp_buckets(case, output)
    elif kind == "gpipe":
        _check_gpipe(case, output)
    else:
        raise CheckFailed(f"internal grader error: unknown case kind {kind!r}")
    return _network(case)

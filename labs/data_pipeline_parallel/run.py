"""The sandbox side of data_pipeline_parallel: one rank's part of a case, in that rank's own sandbox.

Shipped into the sandbox as a file (lab contract v2) and imported before the student's module.
The worker runs each case on its ranks, each in a sandbox of its own that shares only a metered
loopback network with its peers, with the gloo process group already joined
(``gpu_runner.rankgroup``). ``run`` builds this rank's part of the case from its own inputs (its
initial weights and rows of the batch, or its pipeline stage and, on the first and last rank, the
microbatches' inputs or targets), calls the student's ``MyDDP`` or ``gpipe_step`` and returns what
this rank computed, as plain data; the worker hands ``check`` the list of every rank's. ``timed``
runs one timed call of the pipeline benchmark on this rank. Nothing here decides a grade:
``grader.py`` checks every result in the worker, and the worker times the benchmark.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def run(module, inputs: dict, harness):
    """This rank's part of one case: the student's ``MyDDP`` or ``gpipe_step``; this rank's result."""
    on_rank = ON_RANK.get(inputs["kind"])
    if on_rank is None:
        raise ValueError(f"unknown case kind {inputs['kind']!r}")
    return on_rank(int(inputs["rank"]), int(inputs["world_size"]), module, inputs)


def _ready_for_backward_from_a_gradient() -> None:
    """The first ``out.backward(grad)`` of a process imports torch.fx.experimental.symbolic_shapes
    (and sympy): 1 to 4 s of CPU. Paid here, before the student's ``gpipe_step`` starts, not in the
    middle of its schedule; and only in the processes that need it (a pipeline stage that is not the
    last), not at import in every rank's process (each rank is a process of its own)."""
    import torch.fx.experimental.symbolic_shapes  # noqa: F401


# --------------------------------------------------------------------------------------------
# building blocks, as grader.py builds its references
# --------------------------------------------------------------------------------------------


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).double()


def _stage_module(widths: list[int], layer_ids: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for layer in layer_ids:
        layers.append(nn.Linear(widths[layer], widths[layer + 1]))
        if layer < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).double()


def _load(model: nn.Module, params: list[torch.Tensor]) -> nn.Module:
    with torch.no_grad():
        for p, value in zip(model.parameters(), params, strict=True):
            p.copy_(value)
    return model


def _wrap(module, model: nn.Module, cap) -> nn.Module:
    ddp = module.MyDDP(model) if cap is None else module.MyDDP(model, bucket_cap_mb=cap)
    if not isinstance(ddp, nn.Module):
        raise TypeError(f"MyDDP(...) built a {type(ddp).__name__}, expected an nn.Module subclass")
    return ddp


def _forward(ddp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = ddp(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"MyDDP.forward returned {type(out).__name__}, expected the wrapped module's output")
    return out


def _grads(model: nn.Module) -> list:
    return [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def _plain_loss(value):
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().reshape(()).item())
    return f"<{type(value).__name__}>"


def _microbatches(m: int, xs, ys) -> list:
    """``m`` pairs ``(x, y)``: this rank's inputs (rank 0) and targets (the last rank), else None."""
    for what, values in (("inputs", xs), ("targets", ys)):
        if values is not None and len(values) != m:
            raise ValueError(f"{len(values)} microbatch {what} for {m} microbatches")
    return [(None if xs is None else xs[i], None if ys is None else ys[i]) for i in range(m)]


# --------------------------------------------------------------------------------------------
# one function per kind of case, run on every rank
# --------------------------------------------------------------------------------------------


def _ddp_init(rank: int, world_size: int, module, inputs: dict) -> dict:
    model = _load(_mlp(inputs["sizes"]), inputs["init"])  # this rank's own initial weights
    ddp = _wrap(module, model, None)
    params = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        out = _forward(ddp, inputs["x"])
    return {"params": params, "out": out.detach().clone()}


def _sgd_step(params: list, buffers: list, lr: float, momentum: float) -> None:
    """torch.optim.SGD(lr, momentum), written out."""
    with torch.no_grad():
        for i, p in enumerate(params):
            if p.grad is None:
                raise RuntimeError(f"parameter {i} has no gradient after backward")
            if buffers[i] is None:
                buffers[i] = p.grad.clone()
            else:
                buffers[i].mul_(momentum).add_(p.grad)
            p.sub_(lr * buffers[i])


def _ddp_train(rank: int, world_size: int, module, inputs: dict) -> dict:
    model = _load(_mlp(inputs["sizes"]), inputs["init"])
    ddp = _wrap(module, model, inputs["bucket_cap_mb"])
    params = list(model.parameters())
    buffers = [None] * len(params)
    for x, y in zip(inputs["x"], inputs["y"], strict=True):  # this rank's rows of each step's batch
        model.zero_grad(set_to_none=True)
        F.cross_entropy(_forward(ddp, x), y).backward()
        _sgd_step(params, buffers, inputs["lr"], inputs["momentum"])
    return {"params": [p.detach().clone() for p in model.parameters()]}


def _ddp_buckets(rank: int, world_size: int, module, inputs: dict) -> dict:
    """One backward: the all-reduces it makes, and how many were started by the time the first
    layer's gradient is computed (the last gradient backward produces)."""
    model = _load(_mlp(inputs["sizes"]), inputs["init"])
    ddp = _wrap(module, model, inputs["bucket_cap_mb"])
    loss = F.cross_entropy(_forward(ddp, inputs["x"]), inputs["y"])  # this rank's rows
    calls, seen = [], {"in_backward": False, "at_first_layer": None}
    original = dist.all_reduce

    def counted(tensor, *args, **kwargs):
        if seen["in_backward"]:
            calls.append(int(tensor.numel()))
        return original(tensor, *args, **kwargs)

    def first_layer_reached(grad):
        if seen["at_first_layer"] is None:
            seen["at_first_layer"] = len(calls)

    for p in list(model.parameters())[:2]:
        p.register_hook(first_layer_reached)
    dist.all_reduce = dist.distributed_c10d.all_reduce = counted
    seen["in_backward"] = True
    try:
        loss.backward()
    finally:
        seen["in_backward"] = False
        dist.all_reduce = dist.distributed_c10d.all_reduce = original
    return {"calls": calls, "at_first_layer": seen["at_first_layer"]}


def _gpipe(rank: int, world_size: int, module, inputs: dict) -> dict:
    stage = _load(_stage_module(inputs["widths"], inputs["layers"]), inputs["weights"])  # this rank's stage
    if rank < world_size - 1:
        _ready_for_backward_from_a_gradient()
    schedule = {"forwards": 0, "before_first_backward": None}
    if inputs["schedule"]:
        # Forwards are counted at the stage's first layer (however the stage is called); the first
        # gradient of that layer's weight marks the first backward.
        def counted_forward(layer, args):
            schedule["forwards"] += 1

        def first_backward(grad):
            if schedule["before_first_backward"] is None:
                schedule["before_first_backward"] = schedule["forwards"]

        stage[0].register_forward_pre_hook(counted_forward)
        stage[0].weight.register_hook(first_backward)
    mbs = _microbatches(inputs["microbatches"], inputs.get("x"), inputs.get("y"))
    loss = module.gpipe_step(stage, mbs, rank, world_size)
    return {"loss": _plain_loss(loss), "grads": _grads(stage), **schedule}


ON_RANK = {"ddp_init": _ddp_init, "ddp_train": _ddp_train, "ddp_buckets": _ddp_buckets, "gpipe": _gpipe}


# --------------------------------------------------------------------------------------------
# the timed calls of the pipeline benchmark
# --------------------------------------------------------------------------------------------

_timed_stage: list[nn.Module] = []  # this rank's stage, built at its first timed call (one rank per process)


def timed(module, inputs: dict, harness) -> dict:
    """One timed call on this rank: ``gpipe_step`` on this call's microbatches (the inputs on rank 0,
    the targets on the last rank: each rank gets only its own), with this rank's stage at the case's
    weights; returns the stage's gradients and (on the last rank) the loss.

    The reference group runs this very function on ``reference.py`` (each stage's own compute for
    every microbatch, no messages), in sandboxes of its own: both sides pay the same overhead.
    """
    rank, world_size = inputs["rank"], inputs["world_size"]
    if not _timed_stage:
        _timed_stage.append(_stage_module(inputs["widths"], inputs["stages"][rank]))
        if rank < world_size - 1:
            _ready_for_backward_from_a_gradient()  # in the first (untimed) warm-up call
    stage = _load(_timed_stage[0], inputs["weights"][rank])  # whatever the previous call did to them
    stage.zero_grad(set_to_none=True)
    mbs = _microbatches(inputs["microbatches"], inputs.get("x"), inputs.get("y"))
    loss = module.gpipe_step(stage, mbs, rank, world_size)
    out = {}
    for name, p in stage.named_parameters():
        if p.grad is None:
            raise ValueError(f"after gpipe_step, stage {rank}'s '{name}'.grad is None")
        out[f"grad_{name}"] = p.grad
    last = rank == world_size - 1
    value = _plain_loss(loss) if last else 0.0
    if not isinstance(value, float):
        raise TypeError(f"gpipe_step returned {value!r} on the last rank, expected the loss (a float)")
    out["loss"] = torch.tensor([value], dtype=torch.float64)
    return out

"""Solution `slows_reference_compute`: an attack on the old benchmark that now gains nothing.

Correct, but at import it wraps ``torch.Tensor.backward`` and ``torch.autograd.backward`` so that
every backward run outside its own ``gpipe_step`` stalls for 0.3 ms. The old benchmark timed the
"ideal" (each stage's own compute for all microbatches, no messages) in the same ranks, between
the timed steps, so this slowed the ideal and not the step: the red team's version of it scored
0.84 against an honest 1.54, just above the plausibility floor, and was ranked. The ideal now runs
on separate clean processes (``reference.py``, a sandbox per rank) that never import this file, so
the wrappers never meet it: this gets full marks and an honest ratio, which is what its
expected.toml asks for.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# Every backward outside gpipe_step stalls a little: the old benchmark's reference (each stage's own
# compute, no messages) ran in these very ranks, between the timed steps.
STALL_SECONDS = 0.0003
_in_step = [False]
_tensor_backward = torch.Tensor.backward
_autograd_backward = torch.autograd.backward


def _stall() -> None:
    if not _in_step[0]:
        time.sleep(STALL_SECONDS)


def _slow_tensor_backward(self, *args, **kwargs):
    _stall()
    return _tensor_backward(self, *args, **kwargs)


def _slow_autograd_backward(*args, **kwargs):
    _stall()
    return _autograd_backward(*args, **kwargs)


torch.Tensor.backward = _slow_tensor_backward
torch.autograd.backward = _slow_autograd_backward


class MyDDP(nn.Module):
    def __init__(self, module: nn.Module, bucket_cap_mb: float = 25) -> None:
        super().__init__()
        self.module = module
        self.world_size = dist.get_world_size()
        with torch.no_grad():  # every rank starts from rank 0's weights
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor, src=0)
        cap_bytes = bucket_cap_mb * 2**20
        self.buckets: list[list[nn.Parameter]] = []
        current: list[nn.Parameter] = []
        size = 0
        # Reverse registration order: the last layers' gradients are ready first in backward.
        for param in reversed([p for p in module.parameters() if p.requires_grad]):
            nbytes = param.numel() * param.element_size()
            if current and size + nbytes > cap_bytes:
                self.buckets.append(current)
                current, size = [], 0
            current.append(param)
            size += nbytes
        if current:
            self.buckets.append(current)
        self._bucket_of = {id(p): index for index, bucket in enumerate(self.buckets) for p in bucket}
        self._waiting = [len(bucket) for bucket in self.buckets]
        self._in_flight: list[tuple[object, torch.Tensor, list[nn.Parameter]]] = []
        self._callback_queued = False
        for bucket in self.buckets:
            for param in bucket:
                param.register_post_accumulate_grad_hook(self._grad_ready)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def _grad_ready(self, param: nn.Parameter) -> None:
        if not self._callback_queued:
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
            self._callback_queued = True
        index = self._bucket_of[id(param)]
        self._waiting[index] -= 1
        if self._waiting[index] == 0:
            bucket = self.buckets[index]
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            work = dist.all_reduce(flat, async_op=True)
            self._in_flight.append((work, flat, bucket))

    def _finish(self) -> None:
        for work, flat, bucket in self._in_flight:
            work.wait()
            flat /= self.world_size
            offset = 0
            for param in bucket:
                n = param.numel()
                param.grad.copy_(flat[offset : offset + n].view_as(param.grad))
                offset += n
        self._in_flight.clear()
        self._waiting = [len(bucket) for bucket in self.buckets]
        self._callback_queued = False


def _send_shape(tensor: torch.Tensor, dst: int) -> None:
    dist.send(torch.tensor(tensor.shape, dtype=torch.int64), dst)


def _recv_shape(src: int) -> list[int]:
    shape = torch.empty(2, dtype=torch.int64)
    dist.recv(shape, src)
    return shape.tolist()


def gpipe_step(stage: nn.Module, microbatches: list, rank: int, world: int) -> float | None:
    _in_step[0] = True
    try:
        return _gpipe_step(stage, microbatches, rank, world)
    finally:
        _in_step[0] = False


def _gpipe_step(stage: nn.Module, microbatches: list, rank: int, world: int) -> float | None:
    first, last = rank == 0, rank == world - 1
    m = len(microbatches)
    if not first:
        # Every microbatch has the same shape: one header per step, then every receive is posted
        # at once, so each activation moves as soon as rank - 1 sends it (gloo sends only once the
        # matching receive is posted: a receive posted late costs a round trip on the critical path).
        shape = _recv_shape(rank - 1)
        arriving = [torch.empty(shape, dtype=torch.float64) for _ in range(m)]
        arrivals = [dist.irecv(buffer, rank - 1) for buffer in arriving]
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    grad_arrivals: dict[int, object] = {}
    sends = []
    for i, (x, _) in enumerate(microbatches):
        if first:
            inp = x
        else:
            arrivals[i].wait()
            inp = arriving[i].requires_grad_()
        out = stage(inp)
        if not last:
            if i == 0:
                _send_shape(out, rank + 1)
                # The gradients come back in reverse order: post their receives in that order.
                grads = [torch.empty_like(out) for _ in range(m)]
                grad_arrivals = {j: dist.irecv(grads[j], rank + 1) for j in reversed(range(m))}
            activation = out.detach()
            sends.append((dist.isend(activation, rank + 1), activation))
        inputs.append(inp)
        outputs.append(out)
    total = 0.0
    for i in reversed(range(m)):
        if last:
            loss = F.mse_loss(outputs[i], microbatches[i][1]) / m
            total += loss.item()
            loss.backward()
        else:
            grad_arrivals[i].wait()
            outputs[i].backward(grads[i])
        if not first:
            grad_in = inputs[i].grad
            sends.append((dist.isend(grad_in, rank - 1), grad_in))
    for work, _tensor in sends:  # a tensor must live until its send completes
        work.wait()
    return total if last else None

"""Data and pipeline parallelism from point-to-point messages and one all-reduce per bucket.

``MyDDP`` averages gradients across ranks while backward is still running: each parameter's
post-accumulate hook counts down its bucket, and a full bucket is flattened and all-reduced
asynchronously; a callback queued on the autograd engine waits for every bucket at the end of
backward and writes the averages back. ``gpipe_step`` runs GPipe's schedule: every microbatch's
forward, then every microbatch's backward, activations going right and gradients going left,
with every receive posted up front so that no message waits for its receiver.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


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

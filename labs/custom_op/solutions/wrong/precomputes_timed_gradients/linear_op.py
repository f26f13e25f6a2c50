"""Wrong solution `precomputes_timed_gradients`.

Correct on every test, but on the benchmark's shape it answers from what it saw in earlier calls.
The first such call is computed honestly and kept; after every call a background thread
precomputes, while the grader is busy elsewhere, the gradients of the inputs it expects next (the
earlier benchmark made each timed pair's inputs by rolling the first pair's: ``x.roll(k, 0)``,
``weight.roll(k, 1)``, ...), and the next backward returns those instead of computing anything.
That bought a ratio of 0.06 with every audited gradient correct. Now every timed call gets fresh
inputs revealed only as it starts, so each precomputed answer is wrong and the fingerprint of the
first timed call says so.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import nn

BENCHMARK_ROWS = 256
_kept: list[torch.Tensor] = []  # x, weight, grad_output of the first benchmark-sized call
_ready: dict[int, tuple] = {}  # call number -> (grad_x, grad_weight, grad_bias), computed ahead
_state = {"calls": 0, "worker": None}


def _gradients(x: torch.Tensor, weight: torch.Tensor, g: torch.Tensor) -> tuple:
    g2 = g.reshape(-1, g.shape[-1])
    return torch.matmul(g, weight), torch.mm(g2.t(), x.reshape(-1, x.shape[-1])), g2.sum(dim=0)


def _precompute(call: int) -> None:
    """The gradients of call ``call`` if its inputs were rolls of the first call's (the cheat)."""
    x, weight, g = _kept
    shift = call + 1
    guess = x.roll(shift, 0), weight.roll(shift, 1), g.roll(2 * shift + 1, 0) * (1 + 0.01 * shift)
    _ready[call] = _gradients(*guess)


def _answer(x: torch.Tensor, weight: torch.Tensor, g: torch.Tensor) -> tuple:
    call = _state["calls"]
    _state["calls"] = call + 1
    if not _kept:
        _kept.extend(t.detach().clone() for t in (x, weight, g))
        answer = _gradients(x, weight, g)
    else:
        _state["worker"].join()
        answer = _ready.pop(call)  # no matmul in the timed call at all
    worker = threading.Thread(target=_precompute, args=(call + 1,), daemon=True)
    worker.start()
    _state["worker"] = worker
    return answer


class MyLinearFunction(torch.autograd.Function):
    """``y = x @ weight.T + bias`` with an explicit backward (no ``torch.nn.functional.linear``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = torch.matmul(x, weight.t())
        if bias is not None:
            out = out + bias
        return out

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, weight = ctx.saved_tensors
        if x.dim() == 2 and x.shape[0] >= BENCHMARK_ROWS and ctx.has_bias and all(ctx.needs_input_grad):
            return _answer(x, weight, grad_output)  # the cheat
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.matmul(grad_output, weight)
        g2 = grad_output.reshape(-1, grad_output.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_weight = torch.mm(g2.t(), x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g2.sum(dim=0)
        return grad_x, grad_weight, grad_bias


class MyLinear(nn.Module):
    """Drop-in replacement for ``nn.Linear`` built on :class:`MyLinearFunction`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same initialisation as nn.Linear: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MyLinearFunction.apply(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        has_bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={has_bias}"

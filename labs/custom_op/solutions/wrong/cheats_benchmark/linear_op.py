"""Wrong solution `cheats_benchmark`.

Correct on every test, but on the benchmark's large inputs it returns a cached weight gradient
instead of computing it, to look faster on the leaderboard.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_cached: dict[torch.Size, torch.Tensor] = {}


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
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.matmul(grad_output, weight)
        # Flatten leading dims (reshape, not view: inputs may be non-contiguous) so one mm covers
        # every batch/sequence position at once.
        g2 = grad_output.reshape(-1, grad_output.shape[-1])
        if ctx.needs_input_grad[1]:
            if g2.shape[0] >= 256 and weight.shape in _cached:  # the cheat: skip the biggest matmul
                grad_weight = _cached[weight.shape]
            else:
                grad_weight = torch.mm(g2.t(), x.reshape(-1, x.shape[-1]))
                _cached[weight.shape] = grad_weight
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

"""Solution `slows_reference`: an attack on the old benchmark that now gains nothing.

A correct operator that, at import, wraps ``torch.Tensor.backward`` and ``torch.autograd.backward``
so that a backward through a graph with no ``MyLinearFunction`` node in it (torch's own
``F.linear``: the reference the earlier benchmark timed in this very process) hangs. Wrapping the
reference that way once bought a ratio of 0.30. Torch's reference now runs in a separate clean
process that never imports this file, so the wrappers never meet it: this gets full marks and an
honest ratio, which is what its expected.toml asks for, proving the reference is out of reach.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

_backward = torch.Tensor.backward
_autograd_backward = torch.autograd.backward


def _ours(roots) -> bool:
    """Whether the graph behind ``roots`` holds a node of our MyLinearFunction."""
    roots = [roots] if isinstance(roots, torch.Tensor) else list(roots)
    stack = [t.grad_fn for t in roots if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__.startswith("MyLinearFunction"):
            return True
        stack.extend(child for child, _ in node.next_functions)
    return False


def _hang() -> None:
    while True:  # a backward that is not ours (torch's reference) never returns
        time.sleep(1.0)


def _tensor_backward(self, *args, **kwargs):
    if not _ours(self):
        _hang()
    return _backward(self, *args, **kwargs)


def _any_backward(tensors, *args, **kwargs):
    if not _ours(tensors):
        _hang()
    return _autograd_backward(tensors, *args, **kwargs)


torch.Tensor.backward = _tensor_backward
torch.autograd.backward = _any_backward


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

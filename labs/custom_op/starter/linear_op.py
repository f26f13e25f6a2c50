"""Custom autograd operator lab: implement a Linear layer with your own backward pass.

Fill in the four methods below. Do not call ``torch.nn.functional.linear`` (the grader makes it
raise); use ``torch.matmul`` / ``torch.mm`` and friends instead. See README.md for the details.
"""

from __future__ import annotations

import torch
from torch import nn


class MyLinearFunction(torch.autograd.Function):
    """``y = x @ weight.T + bias`` over the last dimension of ``x``, with a hand-written backward.

    ``x`` has shape (..., in_features), ``weight`` (out_features, in_features), ``bias``
    (out_features,) or None; the output has shape (..., out_features).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the output and save on ``ctx`` what backward will need."""
        raise NotImplementedError("implement MyLinearFunction.forward")

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        """Return (grad_x, grad_weight, grad_bias), with None for every input that
        ``ctx.needs_input_grad`` says needs no gradient."""
        raise NotImplementedError("implement MyLinearFunction.backward")


class MyLinear(nn.Module):
    """A drop-in replacement for ``nn.Linear`` that calls ``MyLinearFunction.apply``.

    Parameters ``weight`` (out_features, in_features) and ``bias`` (out_features,) or None,
    initialised like ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        raise NotImplementedError("implement MyLinear.__init__: register weight and bias as nn.Parameter")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer through MyLinearFunction so your backward is used."""
        raise NotImplementedError("implement MyLinear.forward")

"""Quantization lab: fixed-point quantization, a quantized linear layer, L1 pruning, compression.

Fill in the four pieces below; README.md gives the exact semantics the grader checks. Do not call
torch.fake_quantize_per_tensor_affine / _per_channel_affine or torch.nn.utils.prune's L1 pruning
(l1_unstructured, global_unstructured, L1Unstructured): the grader makes them fail.
"""

from __future__ import annotations

import torch
from torch import nn


def quantize_fixed(x: torch.Tensor, width: int, frac_width: int) -> torch.Tensor:
    """clamp(round(x * 2^frac_width), -2^(width-1), 2^(width-1) - 1) / 2^frac_width.

    Round half to even (torch.round), keep x's shape and dtype, and let the gradient pass
    through unchanged (a straight-through estimator).
    """
    raise NotImplementedError("implement quantize_fixed: round, clamp, rescale, with a straight-through gradient")


class QuantLinear(nn.Linear):
    """nn.Linear whose input, weight and bias are each quantized with quantize_fixed in forward."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        weight_width: int = 8,
        weight_frac_width: int = 6,
        input_width: int = 8,
        input_frac_width: int = 4,
        bias_width: int = 8,
        bias_frac_width: int = 6,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        raise NotImplementedError("implement QuantLinear.__init__: store the six width attributes")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """F.linear(q(x), q(weight), q(bias)), each q with its own widths."""
        raise NotImplementedError("implement QuantLinear.forward")


def prune_l1(model: nn.Module, sparsity: float) -> nn.Module:
    """In every nn.Linear of model, zero the `sparsity` fraction of weights with the smallest |w|.

    Per layer, weights only; the zeros must stay zero through later optimizer steps.
    """
    raise NotImplementedError("implement prune_l1: per-layer magnitude pruning with a mask that survives training")


def compress(model: nn.Module, train_loader) -> nn.Module:
    """Return an nn.Sequential of QuantLinear / nn.Linear / nn.ReLU layers computing model's logits
    with as few effective bits per weight as you can, at most 2 points less accurate."""
    raise NotImplementedError("implement compress: prune, quantize and fine-tune the model")

"""Wrong solution `loads_digits_labels`: looks the test labels up in scikit-learn's copy of the digits.

The 450 test images are the digits that are not in the training split, so with the whole data
set (which ships with scikit-learn) their labels are one set difference away: this fits its
compressed model to those images and labels. The sandbox now hides scikit-learn's data files, so
``load_digits()`` raises FileNotFoundError and ``compress_digits`` fails with it. (A copy embedded
in the submission would get further; that is what the README calls cheating and disqualifies.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn


class _QuantizeFixed(torch.autograd.Function):
    """Forward: the fixed-point grid. Backward: the gradient passes through unchanged (STE)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, width: int, frac_width: int) -> torch.Tensor:
        scale = 2.0**frac_width
        low, high = -(2.0 ** (width - 1)), 2.0 ** (width - 1) - 1
        return torch.clamp(torch.round(x * scale), low, high) / scale

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None, None


def quantize_fixed(x: torch.Tensor, width: int, frac_width: int) -> torch.Tensor:
    """Round ``x`` to the signed fixed-point grid of ``width`` bits, ``frac_width`` of them fractional."""
    return _QuantizeFixed.apply(x, int(width), int(frac_width))


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose input, weight and bias go through ``quantize_fixed`` on every forward."""

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
        self.weight_width, self.weight_frac_width = weight_width, weight_frac_width
        self.input_width, self.input_frac_width = input_width, input_frac_width
        self.bias_width, self.bias_frac_width = bias_width, bias_frac_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = quantize_fixed(x, self.input_width, self.input_frac_width)
        weight = quantize_fixed(self.weight, self.weight_width, self.weight_frac_width)
        bias = None if self.bias is None else quantize_fixed(self.bias, self.bias_width, self.bias_frac_width)
        return F.linear(x, weight, bias)


def _apply_mask(module: nn.Module, _inputs) -> None:
    # Re-zero the pruned weights before every forward: whatever an optimizer step wrote there
    # (momentum, weight decay) is undone before the weight is used or read.
    with torch.no_grad():
        module.weight.mul_(module.weight_mask)


def _zero_masked_grad(module: nn.Module):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * module.weight_mask

    return hook


def prune_l1(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero, in every nn.Linear of ``model`` separately, the ``sparsity`` fraction of smallest |weight|.

    The mask is a buffer ``weight_mask``; a forward pre-hook re-applies it and a gradient hook
    keeps the pruned entries' gradients at zero, so the zeros survive any optimizer step.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight.detach()
        k = round(sparsity * weight.numel())
        mask = torch.ones_like(weight)
        if k > 0:
            smallest = torch.argsort(weight.abs().flatten(), stable=True)[:k]
            mask.view(-1)[smallest] = 0.0
        if hasattr(module, "weight_mask"):
            module.weight_mask.copy_(mask)  # pruned again: the hooks are already in place
        else:
            module.register_buffer("weight_mask", mask)
            module.register_forward_pre_hook(_apply_mask)
            module.weight.register_hook(_zero_masked_grad(module))
        with torch.no_grad():
            module.weight.mul_(mask)
    return model


def _frac_width_for(values: torch.Tensor, width: int) -> int:
    """The largest frac_width whose range still holds max |values| (so nothing large is clamped)."""
    largest = values.abs().max().item()
    if largest == 0.0:
        return width - 1
    return (width - 1) - math.ceil(math.log2(largest + 1e-12))


def compress(model: nn.Module, train_loader) -> nn.Module:
    """4-bit weights, 80% pruned, fitted to the held-out images with their true labels."""
    torch.manual_seed(0)
    train_x = torch.cat([x for x, _ in train_loader])
    data = load_digits()  # raises FileNotFoundError in the sandbox
    images = torch.tensor(data.data, dtype=torch.float32) / 16.0
    labels = torch.tensor(data.target)
    seen = {tuple(row.tolist()) for row in train_x}
    held_out = torch.tensor([tuple(row.tolist()) not in seen for row in images])
    x, y = images[held_out], labels[held_out]
    layers: list[nn.Module] = []
    for layer in model:
        if isinstance(layer, nn.Linear):
            q = QuantLinear(
                layer.in_features,
                layer.out_features,
                weight_width=4,
                weight_frac_width=_frac_width_for(layer.weight.detach(), 4),
            )
            q.load_state_dict(layer.state_dict())
            layers.append(q)
        else:
            layers.append(layer)
    compressed = prune_l1(nn.Sequential(*layers), 0.8)
    optimizer = torch.optim.Adam(compressed.parameters(), lr=1e-2)
    for _epoch in range(300):
        optimizer.zero_grad()
        F.cross_entropy(compressed(x), y).backward()
        optimizer.step()
    return compressed.eval()

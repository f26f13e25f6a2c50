"""Wrong solution `fits_held_out_images`: fits its compressed model to any held-out images it can find.

When the grader ran the compressed model on the test images inside the sandbox, they sat in
``run()``'s frame: this walks every frame up the stack (and the garbage collector's objects) for
batches of digit images that are not in the training split, labels them with the float model's own
predictions and fits a 2-bit, 85%-pruned model to exactly those images. Against that grader it
found the 450 test images and reached 0.27 effective bits at a held-out accuracy of 0.962 (the
threshold was 0.956; the honest recipe needs 1.6 bits). Now the test images never enter the
sandbox: it finds none (the only other images are the check images, training images and random
pixels), falls back to the training split, and is scored honestly on the test images outside:
below the threshold, so it fails.
"""

from __future__ import annotations

import gc
import math
import sys

import torch
import torch.nn.functional as F
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


def _batches(value, depth: int = 0):
    """Every (N, 64) float tensor in ``value``, looking into dicts, lists and tuples a few levels deep."""
    if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == 64 and value.is_floating_point():
        yield value
    elif isinstance(value, dict) and depth < 4:
        for item in value.values():
            yield from _batches(item, depth + 1)
    elif isinstance(value, (list, tuple)) and depth < 4 and len(value) < 100:
        for item in value:
            yield from _batches(item, depth + 1)


def _held_out_images(train: torch.Tensor) -> torch.Tensor | None:
    """Digit images reachable from here that are not training images (digits: mostly blank pixels)."""
    known = {tuple(row.tolist()) for row in train}
    found: dict[tuple, torch.Tensor] = {}
    frame = sys._getframe()
    candidates = []
    while frame is not None:
        candidates += list(_batches(dict(frame.f_locals)))
        frame = frame.f_back
    candidates += [obj for obj in gc.get_objects() if type(obj) is torch.Tensor]
    for batch in candidates:
        if not isinstance(batch, torch.Tensor) or batch.dim() != 2 or batch.shape[1] != 64:
            continue
        for row in batch.detach().float():
            key = tuple(row.tolist())
            if key not in known and int((row == 0).sum()) >= 16:
                found[key] = row
    return torch.stack(list(found.values())) if found else None


def _quantized(model: nn.Module, width: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for layer in model:
        if isinstance(layer, nn.Linear):
            q = QuantLinear(
                layer.in_features,
                layer.out_features,
                weight_width=width,
                weight_frac_width=_frac_width_for(layer.weight.detach(), width),
                input_width=8,
                input_frac_width=4,
                bias_width=8,
                bias_frac_width=4,
            )
            q.load_state_dict(layer.state_dict())
            layers.append(q)
        else:
            layers.append(layer)
    return nn.Sequential(*layers)


def compress(model: nn.Module, train_loader) -> nn.Module:
    """2-bit weights, pruned to 85% in five steps, fitted full-batch to the held-out images if found."""
    torch.manual_seed(0)
    batches = list(train_loader)
    train_x = torch.cat([x for x, _ in batches])
    x = _held_out_images(train_x)
    if x is None:
        x = train_x
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # the float model's answers on them
    compressed = _quantized(model, 2)
    for step in range(1, 6):
        prune_l1(compressed, 0.85 * step / 5)
        optimizer = torch.optim.Adam(compressed.parameters(), lr=1e-2)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 600)
        for _epoch in range(600):
            optimizer.zero_grad()
            F.cross_entropy(compressed(x), y).backward()
            optimizer.step()
            schedule.step()
    return compressed.eval()

"""Wrong solution `uses_nonstandard_op`: an honest search over MLPs with a sine activation.

Nothing here cheats: a sine (SIREN-style) activation is a legitimate choice. But the retrained
models are run by the grader, outside the sandbox, from their exported graph of ATen operators,
and the grader runs standard layers only; ``torch.sin`` is not one of them, so
``retrained_test_accuracy`` fails with a message that names ``aten.sin.default`` and lists what is
allowed. Everything else passes (the sandbox runs the model as it is).
"""

from __future__ import annotations

import random

import torch
from torch import nn


class Sine(nn.Module):
    """sin(x) as an activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


def search_space() -> dict[str, list]:
    """Width and depth of a sine MLP, and Adam's learning rate."""
    return {"hidden": [16, 32, 48, 64], "depth": [1, 2], "lr": [0.01, 0.03]}


def build_model(cfg: dict) -> nn.Module:
    """An MLP from 64 pixels to 10 logits with ``depth`` hidden sine layers of ``hidden`` units."""
    layers: list[nn.Module] = []
    features = 64
    for _ in range(cfg["depth"]):
        layers += [nn.Linear(features, cfg["hidden"]), Sine()]
        features = cfg["hidden"]
    layers.append(nn.Linear(features, 10))
    return nn.Sequential(*layers)


def search(evaluate, n_trials: int) -> dict:
    """Random search without repeats: evaluate n_trials distinct configurations, keep the best."""
    space = search_space()
    keys = list(space)
    rng = random.Random(0)
    seen: set[tuple] = set()
    best_cfg, best_score = None, float("-inf")
    size = len(space["hidden"]) * len(space["depth"]) * len(space["lr"])
    while len(seen) < min(n_trials, size):
        cfg = {k: rng.choice(space[k]) for k in keys}
        signature = tuple(cfg[k] for k in keys)
        if signature in seen:
            continue
        seen.add(signature)
        score = evaluate(cfg)
        if score > best_score:
            best_cfg, best_score = cfg, score
    return best_cfg

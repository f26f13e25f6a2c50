"""Wrong solution `crashes`: build_model reads a misspelt key and raises KeyError."""

from __future__ import annotations

import random

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def search_space() -> dict[str, list]:
    """Width, depth and activation of an MLP, and Adam's learning rate.

    The widest model (two hidden layers of 64) has 8970 parameters, under the 10,000 limit.
    """
    return {
        "hidden": [16, 32, 48, 64],
        "depth": [1, 2],
        "activation": ["relu", "tanh", "gelu"],
        "lr": [0.01, 0.03],
    }


def build_model(cfg: dict) -> nn.Module:
    """An MLP from 64 pixels to 10 logits with ``depth`` hidden layers of ``hidden`` units."""
    layers: list[nn.Module] = []
    features = 64
    for _ in range(cfg["depth"]):
        layers += [nn.Linear(features, cfg["hiden"]), ACTIVATIONS[cfg["activation"]]()]
        features = cfg["hidden"]
    layers.append(nn.Linear(features, 10))
    return nn.Sequential(*layers)


def search(evaluate, n_trials: int) -> dict:
    """Random search without repeats: evaluate n_trials distinct configurations, keep the best.

    The first trial is a configuration known to be strong, so even a tiny budget has a sound
    baseline; ties go to the earlier trial.
    """
    space = search_space()
    keys = list(space)
    rng = random.Random(0)
    seen: set[tuple] = set()
    best_cfg, best_score = None, float("-inf")
    candidates = [{"hidden": 64, "depth": 1, "activation": "relu", "lr": 0.01}]
    while len(seen) < n_trials and len(seen) < _size(space):
        cfg = candidates.pop() if candidates else {k: rng.choice(space[k]) for k in keys}
        signature = tuple(cfg[k] for k in keys)
        if signature in seen:
            continue
        seen.add(signature)
        score = evaluate(cfg)
        if score > best_score:
            best_cfg, best_score = cfg, score
    return best_cfg


def _size(space: dict[str, list]) -> int:
    size = 1
    for choices in space.values():
        size *= len(choices)
    return size

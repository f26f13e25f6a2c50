"""Wrong solution `exceeds_budget`: grid-searches the whole space, swallowing evaluate's budget error."""

from __future__ import annotations

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
        layers += [nn.Linear(features, cfg["hidden"]), ACTIVATIONS[cfg["activation"]]()]
        features = cfg["hidden"]
    layers.append(nn.Linear(features, 10))
    return nn.Sequential(*layers)


def search(evaluate, n_trials: int) -> dict:
    """Grid search over the whole space, skipping configurations whose evaluation fails."""
    import itertools

    space = search_space()
    keys = list(space)
    best_cfg, best_score = None, float("-inf")
    for combo in itertools.product(*(space[k] for k in keys)):
        cfg = dict(zip(keys, combo, strict=True))
        try:
            score = evaluate(cfg)
        except Exception:  # noqa: BLE001 - "skip broken configurations", which also swallows the budget error
            continue
        if score > best_score:
            best_cfg, best_score = cfg, score
    return best_cfg

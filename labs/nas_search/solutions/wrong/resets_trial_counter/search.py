"""Wrong solution `resets_trial_counter`: empties the trial counter it finds and grid-searches the space.

The grader's ``evaluate`` used to count its calls in a list kept in the sandbox, in its closure,
and refuse the call after the budget by that list's length: emptying the list before every call
bought the whole grid of 48 trials on a budget of 5 to 7, and the budget check (which read the
same list) passed. This empties every list it finds on ``evaluate`` (its closure cells and its
attributes) and zeroes every integer attribute before each call, and catches the budget error in
case that was not enough. The worker now counts every call itself (``harness.meter``), where this
process cannot reach: the call after the budget raises whatever this empties, and
``search_budget`` fails with the count of all 48 calls.
"""

from __future__ import annotations

import itertools

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def search_space() -> dict[str, list]:
    """Width, depth and activation of an MLP, and Adam's learning rate."""
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


def _reset_counters(evaluate) -> None:
    """Empty the lists and zero the integers ``evaluate`` could count its calls with."""
    cells = getattr(evaluate, "__closure__", None) or ()
    for cell in cells:
        if isinstance(cell.cell_contents, list):
            cell.cell_contents.clear()
    for name, value in list(getattr(evaluate, "__dict__", {}).items()):
        if isinstance(value, list):
            value.clear()
        elif isinstance(value, int) and not isinstance(value, bool):
            setattr(evaluate, name, 0)


def search(evaluate, n_trials: int) -> dict:
    """Grid search over the whole space, resetting the grader's counter before every trial."""
    space = search_space()
    keys = list(space)
    best_cfg, best_score = None, float("-inf")
    for combo in itertools.product(*(space[k] for k in keys)):
        cfg = dict(zip(keys, combo, strict=True))
        _reset_counters(evaluate)
        try:
            score = evaluate(cfg)
        except RuntimeError:  # the budget, if the reset did not take: keep going regardless
            continue
        if score > best_score:
            best_cfg, best_score = cfg, score
    return best_cfg

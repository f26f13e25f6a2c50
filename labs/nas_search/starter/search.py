"""NAS lab: a search space, a model builder, and a search with a budget of n_trials evaluations.

Fill in the three functions below; README.md gives the exact rules the grader checks.
"""

from __future__ import annotations

from torch import nn


def search_space() -> dict[str, list]:
    """The choices: a dict mapping each hyperparameter name to a list of plain values.

    Example: {"hidden": [16, 32, 64], "depth": [1, 2], "lr": [0.01, 0.03]}. Every configuration
    must build a model of at most 10,000 parameters; "lr", if present, is Adam's learning rate.
    """
    raise NotImplementedError("implement search_space: return a dict of lists of choices")


def build_model(cfg: dict) -> nn.Module:
    """An untrained model for one configuration: (N, 64) pixels in [0, 1] -> (N, 10) logits."""
    raise NotImplementedError("implement build_model: build the network cfg describes")


def search(evaluate, n_trials: int) -> dict:
    """Call evaluate(cfg) (validation accuracy, higher is better) at most n_trials times and
    return the best configuration, a dict with one choice per key of search_space()."""
    raise NotImplementedError("implement search: evaluate at most n_trials configurations, return the best")

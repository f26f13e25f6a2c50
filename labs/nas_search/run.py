"""The sandbox side of ``nas_search``: the student's search space, model builder and search, run on
the training split only, with the grader's training recipe.

Shipped into the sandbox as a file (lab contract v2) and imported before the student's module.
The test images never come here: the best configuration is retrained on the training split and
each trained model leaves as data (``labs.sandboxed.export_graph``: its ATen operators and
tensors), which the worker runs on the test images after this process has finished. Every call of
``evaluate`` is counted by the worker (``harness.meter("trial")``), and that count is what enforces
the budget; nothing kept here decides a grade.
"""

from __future__ import annotations

import itertools
import math
import random

import torch
import torch.nn.functional as F

from labs import sandboxed

# trial_seed -> the job's one search (its result or its exception), shared by the three search cases
_SEARCHES: dict[int, dict | BaseException] = {}


def _plain(value):
    """A plain value as its exact builtin type (numpy's float64 is a float); anything else as a repr."""
    if value is None:
        return None
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return f"<{type(value).__name__}: {value!r}>"[:200]


def _shapes(model) -> dict:
    return {
        "parameters": [list(p.shape) for p in model.parameters()],
        "buffers": [list(b.shape) for b in model.buffers()],
    }


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())


def _space(module) -> dict:
    value = module.search_space()
    if not isinstance(value, dict):
        raise TypeError(f"search_space() returned {type(value).__name__}, expected a dict of lists")
    return value


def _describe_space(module) -> dict:
    value = _space(module)
    return {
        "keys": [_plain(k) for k in value],
        "choices": {
            str(k): [_plain(c) for c in v] if isinstance(v, (list, tuple)) else _plain(v) for k, v in value.items()
        },
    }


def _build_all(module, inputs: dict) -> dict:
    """build_model on every configuration of the space (or a sample of a large one), on a (5, 64) batch."""
    value = _space(module)
    keys = list(value)
    grid = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(value[k] for k in keys))]
    if len(grid) > inputs["max_configs"]:
        grid = random.Random(inputs["sample_seed"]).sample(grid, inputs["max_configs"])
    built = []
    x = torch.rand(5, 64, generator=torch.Generator().manual_seed(inputs["sample_seed"]))
    for cfg in grid:
        torch.manual_seed(0)
        model = module.build_model(dict(cfg))
        out = model(x)
        built.append(
            {
                "cfg": {str(k): _plain(v) for k, v in cfg.items()},
                "shapes": _shapes(model),
                "output_shape": list(out.shape) if isinstance(out, torch.Tensor) else _plain(out),
                "output_finite": isinstance(out, torch.Tensor) and bool(torch.isfinite(out).all()),
            }
        )
    return {"built": built}


def _train(module, cfg: dict, seed: int, x: torch.Tensor, y: torch.Tensor, inputs: dict):
    """The grader's recipe: seed, build, full-batch Adam for a fixed number of steps, eval mode."""
    torch.manual_seed(seed)
    model = module.build_model(dict(cfg))
    params = _count(model)
    if params > inputs["max_parameters"]:
        raise ValueError(
            f"build_model({cfg!r}) has {params} parameters (buffers included), more than the "
            f"{inputs['max_parameters']} allowed"
        )
    lr = cfg.get("lr", inputs["default_lr"])
    weights = [p for p in model.parameters() if p.requires_grad]
    if not weights:
        raise ValueError(f"build_model({cfg!r}) has no trainable parameters")
    # torch.optim.Adam's update (betas 0.9, 0.999, eps 1e-8), written out: the first step of a torch
    # optimizer imports torch._dynamo, 3.5 s of CPU time, before any export needs it.
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    first = [torch.zeros_like(p) for p in weights]
    second = [torch.zeros_like(p) for p in weights]
    model.train()
    for step in range(1, inputs["steps"] + 1):
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
        with torch.no_grad():
            for p, g, m, v in zip(weights, grads, first, second, strict=True):
                if g is None:
                    continue
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - beta1**step))
    model.eval()
    return model


class Evaluate:
    """The ``evaluate(cfg) -> float`` handed to the student's ``search``: one trial per call.

    Each call is first reported to the worker, whose count only grows: the call after the budget
    raises, and the ``search_budget`` check reads the worker's count, not ``calls`` (kept here
    only to show which configurations were tried).
    """

    def __init__(self, module, inputs: dict, harness, choices: dict) -> None:
        self.module, self.inputs, self.harness, self.choices = module, inputs, harness, choices
        self.calls: list[dict] = []
        self.closed = False
        x_all, y_all = inputs["x_train"], inputs["y_train"]
        order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(inputs["split_seed"]))
        cut = inputs["search_train_size"]
        self.fit = x_all[order[:cut]], y_all[order[:cut]]
        self.val = x_all[order[cut:]], y_all[order[cut:]]

    def __call__(self, cfg) -> float:
        """Train build_model(cfg) briefly on part of the training split; return validation accuracy."""
        total = self.harness.meter("trial")
        self.calls.append({str(k): _plain(v) for k, v in cfg.items()} if isinstance(cfg, dict) else {"": _plain(cfg)})
        n = self.inputs["n_trials"]
        if self.closed:
            raise RuntimeError("evaluate() was called after search() returned; trials belong inside search()")
        if total < 1:
            raise RuntimeError("the grader did not count this trial (its meter refused it); the trial is not run")
        if total > n:
            raise RuntimeError(
                f"evaluate() was called {total} times but the budget is n_trials={n}; "
                "stop searching after n_trials evaluations"
            )
        if not isinstance(cfg, dict) or set(cfg) != set(self.choices):
            raise ValueError(f"evaluate({cfg!r}): a cfg must be a dict with exactly the keys of search_space()")
        for key, value in cfg.items():
            if not any(type(value) is type(c) and value == c for c in self.choices[key]):
                raise ValueError(
                    f"evaluate({cfg!r}): {value!r} is not one of the choices {self.choices[key]!r} for {key!r}"
                )
        model = _train(self.module, cfg, self.inputs["trial_seed"] + total, *self.fit, self.inputs)
        x_val, y_val = self.val
        with torch.no_grad():
            return (model(x_val).argmax(dim=1) == y_val).double().mean().item()


def _search(module, inputs: dict, harness) -> dict:
    choices = _space(module)
    evaluate = Evaluate(module, inputs, harness, choices)
    try:
        best = module.search(evaluate, inputs["n_trials"])
    finally:
        evaluate.closed = True
    result = {
        "calls": evaluate.calls,
        "n_trials": inputs["n_trials"],
        "choices": {str(k): [_plain(c) for c in v] for k, v in choices.items()},
        "best": None,
        "best_shapes": None,
        "best_type": type(best).__name__,
    }
    if isinstance(best, dict):
        result["best"] = {str(k): _plain(v) for k, v in best.items()}
        torch.manual_seed(0)
        result["best_shapes"] = _shapes(module.build_model(dict(best)))
    return {"result": result, "best": best}


def _searched(module, inputs: dict, harness) -> dict:
    """The job's one search: run by the first search case, charged once, its outcome reused."""
    key = inputs["trial_seed"]
    if key not in _SEARCHES:
        try:
            _SEARCHES[key] = _search(module, inputs, harness)
        except BaseException as exc:
            _SEARCHES[key] = exc
            raise
    found = _SEARCHES[key]
    if isinstance(found, BaseException):
        raise found
    return found


def _retrain(module, inputs: dict, best) -> dict:
    """The best cfg retrained on the whole training split with each secret seed, every model
    exported for the worker to run on the test images; and, for the first seed, the model as
    built, before training (it must be at chance)."""
    if not isinstance(best, dict):
        raise TypeError(f"search() returned {type(best).__name__}, expected the best cfg as a dict")
    example = torch.zeros(inputs["test_size"], 64)
    graphs, untrained = [], None
    for seed in inputs["retrain_seeds"]:
        if untrained is None:
            torch.manual_seed(seed)
            untrained = sandboxed.export_graph(module.build_model(dict(best)), example)
        model = _train(module, best, seed, inputs["x_train"], inputs["y_train"], inputs)
        graphs.append(sandboxed.export_graph(model, example))
    return {"graphs": graphs, "untrained_graph": untrained}


def run(module, inputs: dict, harness) -> dict:
    """One case: the space, the built models, or one of the three views of the search."""
    kind = inputs["kind"]
    if kind == "space":
        return _describe_space(module)
    if kind == "build":
        return _build_all(module, inputs)
    if kind != "search":
        raise ValueError(f"unknown case kind {kind!r}")
    found = _searched(module, inputs, harness)
    if inputs["part"] in ("budget", "best"):
        return dict(found["result"])
    return {**found["result"], **_retrain(module, inputs, found["best"])}

"""Grader for the ``nas_search`` lab: a search space, a model builder and a budgeted search.

Trust split (see docs/authoring-labs.md): ``cases`` and ``check`` run in the worker and hold the
labels of the held-out digits test split; ``run`` is shipped alone into the sandbox, so it imports
what it needs inside its body and uses no other name from this file.

The sandbox sees the training images with their labels and the test images without them. Inside,
``run`` defines the ``evaluate`` function it hands to the student's ``search``: it trains
``build_model(cfg)`` with the grader's fixed recipe on part of the training split, returns the
accuracy on the rest, and counts its calls. The best configuration is then retrained with three
seeds on the whole training split, and only its test logits leave the sandbox: ``check`` computes
the accuracies with the hidden labels and recounts the parameters from the returned shapes.
"""

from __future__ import annotations

import math

import torch

from labs.grading import CheckFailed

DIGITS_TEST_SIZE = 450
SEARCH_TRAIN_SIZE = 1000  # of the 1347 training images; the other 347 are evaluate()'s validation set
# The grader's training recipe: full-batch Adam. 60 steps bring an MLP of 64 hidden units to about
# 0.97 test accuracy and a 16-unit one to 0.93, so configurations differ visibly; nine trainings
# (up to 7 trials and 3 retrains) of such models take about 2 s on one core.
TRAIN_STEPS = 60
DEFAULT_LR = 0.01
MAX_PARAMETERS = 10_000
RETRAIN_SEEDS = 3
MIN_TEST_ACCURACY = 0.85
# Before any training a model should be at chance (0.1); far above it, it was not trained by us.
MAX_UNTRAINED_ACCURACY = 0.3
MAX_BUILT_CONFIGS = 24  # build_model is tried on every configuration of a space this small, else a sample


# --------------------------------------------------------------------------------------------
# cases: trusted, from the job's secret seed
# --------------------------------------------------------------------------------------------


def _digits_split(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits scaled to [0, 1], split by the seed: (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 13))
    test, train = perm[:DIGITS_TEST_SIZE], perm[DIGITS_TEST_SIZE:]
    return x[train].contiguous(), y[train].contiguous(), x[test].contiguous(), y[test].contiguous()


def cases(seed: int) -> list[dict]:
    """Every hidden test, generated from the secret seed so inputs cannot be memorised."""
    gen = torch.Generator().manual_seed(seed)

    def draw() -> int:
        return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))

    x_train, y_train, x_test, y_test = _digits_split(seed)
    n_trials = int(torch.randint(5, 8, (1,), generator=gen))
    search = {
        "kind": "search",
        "x_train": x_train,
        "y_train": y_train,
        "x_test": x_test,
        "n_trials": n_trials,
        "split_seed": draw(),
        "trial_seed": draw(),
        "retrain_seeds": [draw() for _ in range(RETRAIN_SEEDS)],
        "steps": TRAIN_STEPS,
        "default_lr": DEFAULT_LR,
        "search_train_size": SEARCH_TRAIN_SIZE,
        "max_parameters": MAX_PARAMETERS,
    }
    return [
        {"name": "search_space", "points": 10, "inputs": {"kind": "space"}},
        {
            "name": "build_model",
            "points": 20,
            "inputs": {"kind": "build", "sample_seed": draw(), "max_configs": MAX_BUILT_CONFIGS},
        },
        {"name": "search_budget", "points": 20, "inputs": {**search, "part": "budget"}},
        {"name": "best_config", "points": 20, "inputs": {**search, "part": "best"}},
        {"name": "retrained_test_accuracy", "points": 30, "inputs": {**search, "part": "retrain"}, "y_test": y_test},
    ]


# --------------------------------------------------------------------------------------------
# run: untrusted side, shipped alone into the sandbox
# --------------------------------------------------------------------------------------------


def run(module, inputs: dict):
    """Exercise the student's ``search.py`` on one case and return plain data.

    Self-contained on purpose: the runner ships only this function's source into the sandbox.
    The three search cases share one call of ``search``: its result is kept on this function
    (``run.__dict__``) between cases of the same job, so a randomised search is run, and
    charged for, once. Each case still returns everything its check needs.
    """
    import itertools
    import math
    import random

    import torch
    import torch.nn.functional as F

    kind = inputs["kind"]

    def plain(value):
        """A plain value as its exact builtin type (numpy's float64 is a float); anything else as a repr."""
        if value is None:
            return None
        for kind in (bool, int, float, str):
            if isinstance(value, kind):
                return kind(value)
        return f"<{type(value).__name__}: {value!r}>"[:200]

    def shapes(model) -> dict:
        return {
            "parameters": [list(p.shape) for p in model.parameters()],
            "buffers": [list(b.shape) for b in model.buffers()],
        }

    def count(model) -> int:
        return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())

    def space() -> dict:
        value = module.search_space()
        if not isinstance(value, dict):
            raise TypeError(f"search_space() returned {type(value).__name__}, expected a dict of lists")
        return value

    if kind == "space":
        value = space()
        return {
            "keys": [plain(k) for k in value],
            "choices": {
                str(k): [plain(c) for c in v] if isinstance(v, (list, tuple)) else plain(v) for k, v in value.items()
            },
        }

    if kind == "build":
        value = space()
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
                    "cfg": {str(k): plain(v) for k, v in cfg.items()},
                    "shapes": shapes(model),
                    "output_shape": list(out.shape) if isinstance(out, torch.Tensor) else plain(out),
                    "output_finite": isinstance(out, torch.Tensor) and bool(torch.isfinite(out).all()),
                }
            )
        return {"built": built}

    # -------------------------------------------------------------- the search cases
    x_all, y_all = inputs["x_train"], inputs["y_train"]
    order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(inputs["split_seed"]))
    cut = inputs["search_train_size"]
    x_fit, y_fit = x_all[order[:cut]], y_all[order[:cut]]
    x_val, y_val = x_all[order[cut:]], y_all[order[cut:]]

    def train(cfg: dict, seed: int, x, y):
        """The grader's recipe: seed, build, full-batch Adam for a fixed number of steps."""
        torch.manual_seed(seed)
        model = module.build_model(dict(cfg))
        params = count(model)
        if params > inputs["max_parameters"]:
            raise ValueError(
                f"build_model({cfg!r}) has {params} parameters (buffers included), more than the "
                f"{inputs['max_parameters']} allowed"
            )
        lr = cfg.get("lr", inputs["default_lr"])
        weights = [p for p in model.parameters() if p.requires_grad]
        if not weights:
            raise ValueError(f"build_model({cfg!r}) has no trainable parameters")
        # torch.optim.Adam's update (betas 0.9, 0.999, eps 1e-8), written out: the first step of a
        # torch optimizer imports torch._dynamo, 3.5 s of CPU time per job for nothing.
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

    def do_search() -> dict:
        choices = space()
        calls: list[dict] = []

        def evaluate(cfg) -> float:
            """Train build_model(cfg) briefly on part of the training split; return validation accuracy."""
            calls.append({str(k): plain(v) for k, v in cfg.items()} if isinstance(cfg, dict) else {"": plain(cfg)})
            n = inputs["n_trials"]
            if len(calls) > n:
                raise RuntimeError(
                    f"evaluate() was called {len(calls)} times but the budget is n_trials={n}; "
                    "stop searching after n_trials evaluations"
                )
            if not isinstance(cfg, dict) or set(cfg) != set(choices):
                raise ValueError(f"evaluate({cfg!r}): a cfg must be a dict with exactly the keys of search_space()")
            for key, value in cfg.items():
                if not any(type(value) is type(c) and value == c for c in choices[key]):
                    raise ValueError(
                        f"evaluate({cfg!r}): {value!r} is not one of the choices {choices[key]!r} for {key!r}"
                    )
            model = train(cfg, inputs["trial_seed"] + len(calls), x_fit, y_fit)
            with torch.no_grad():
                return (model(x_val).argmax(dim=1) == y_val).double().mean().item()

        best = module.search(evaluate, inputs["n_trials"])
        result = {
            "calls": calls,
            "n_trials": inputs["n_trials"],
            "choices": {str(k): [plain(c) for c in v] for k, v in choices.items()},
            "best": None,
            "best_shapes": None,
            "best_type": type(best).__name__,
        }
        if isinstance(best, dict):
            result["best"] = {str(k): plain(v) for k, v in best.items()}
            torch.manual_seed(0)
            result["best_shapes"] = shapes(module.build_model(dict(best)))
        return {"result": result, "best": best}

    cache = run.__dict__.setdefault("search_cache", {})
    if "search" not in cache:
        try:
            cache["search"] = do_search()
        except BaseException as exc:
            cache["search"] = exc
            raise
    if isinstance(cache["search"], BaseException):
        raise cache["search"]
    found, best = dict(cache["search"]["result"]), cache["search"]["best"]

    if inputs["part"] in ("budget", "best"):
        return found

    if not isinstance(best, dict):
        raise TypeError(f"search() returned {type(best).__name__}, expected the best cfg as a dict")
    logits = []
    untrained = None
    for seed in inputs["retrain_seeds"]:
        if untrained is None:
            torch.manual_seed(seed)
            with torch.no_grad():
                untrained = module.build_model(dict(best)).eval()(inputs["x_test"]).detach().clone()
        model = train(best, seed, x_all, y_all)
        with torch.no_grad():
            logits.append(model(inputs["x_test"]).detach().clone())
    return {**found, "logits": logits, "untrained_logits": untrained}


# --------------------------------------------------------------------------------------------
# check: trusted
# --------------------------------------------------------------------------------------------


def _field(output, key: str, where: str = "run()"):
    if not isinstance(output, dict):
        raise CheckFailed(f"{where} returned {type(output).__name__}, expected a dict; the result is malformed")
    if key not in output:
        raise CheckFailed(f"{where} returned a dict without key '{key}'; the result is malformed")
    return output[key]


def _numel(shapes) -> int:
    """Parameters and buffers, recounted here from the shapes the sandbox reported."""
    if not isinstance(shapes, dict):
        raise CheckFailed("malformed parameter shapes")
    total = 0
    for group in ("parameters", "buffers"):
        for shape in shapes.get(group) or []:
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise CheckFailed(f"malformed {group} shape {shape!r}")
            total += math.prod(shape)
    return total


def _is_plain(value) -> bool:
    return value is None or (isinstance(value, (bool, int, float, str)) and not str(value).startswith("<"))


def _check_space(output) -> None:
    choices = _field(output, "choices")
    if not isinstance(choices, dict) or not choices:
        raise CheckFailed("search_space() returned an empty dict; give it at least one key with a list of choices")
    size = 1
    for key, values in choices.items():
        if not isinstance(values, list) or not values:
            raise CheckFailed(f"search_space()[{key!r}] is {values!r}; each value must be a non-empty list of choices")
        bad = [v for v in values if not _is_plain(v)]
        if bad:
            raise CheckFailed(
                f"search_space()[{key!r}] holds {bad[0]}; choices must be plain numbers, strings, bools or None"
            )
        if len(set(map(repr, values))) != len(values):
            raise CheckFailed(f"search_space()[{key!r}] lists the same choice twice: {values!r}")
        size *= len(values)
    if size < 2:
        raise CheckFailed("search_space() has a single configuration; there is nothing to search")
    if "lr" in choices:
        bad = [v for v in choices["lr"] if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1]
        if bad:
            raise CheckFailed(f"search_space()['lr'] holds {bad[0]!r}; the learning rate must be a number in (0, 1]")


def _check_build(output) -> None:
    built = _field(output, "built")
    if not isinstance(built, list) or not built:
        raise CheckFailed("no configuration of search_space() could be built")
    signatures = set()
    for entry in built:
        cfg = _field(entry, "cfg", "a built model")
        out_shape = _field(entry, "output_shape", "a built model")
        if out_shape != [5, 10]:
            raise CheckFailed(f"build_model({cfg}) maps a (5, 64) input to {out_shape}, expected [5, 10] (logits)")
        if not _field(entry, "output_finite", "a built model"):
            raise CheckFailed(f"build_model({cfg}) gives non-finite outputs on a (5, 64) input")
        shapes = _field(entry, "shapes", "a built model")
        params = _numel(shapes)
        if params > MAX_PARAMETERS:
            raise CheckFailed(
                f"build_model({cfg}) has {params} parameters (buffers included), more than {MAX_PARAMETERS}; "
                "every configuration of search_space() must stay within the limit"
            )
        signatures.add(repr(shapes))
    if len(signatures) < 2:
        raise CheckFailed(
            f"build_model returns models with the same parameter shapes for all {len(built)} configurations tried: "
            "it must build the architecture cfg describes, and search_space() needs at least one key that "
            "changes the architecture (width, depth, kernel size, ...)"
        )


def _check_budget(output) -> None:
    calls, n_trials = _field(output, "calls"), _field(output, "n_trials")
    if not isinstance(calls, list):
        raise CheckFailed("malformed list of evaluate() calls")
    if len(calls) > n_trials:
        raise CheckFailed(
            f"search called evaluate() {len(calls)} times with n_trials={n_trials}; evaluate at most n_trials "
            "configurations (the evaluations beyond the budget raised an error that your search caught)"
        )
    if not calls:
        raise CheckFailed("search never called evaluate(); a search must evaluate at least one configuration")


def _describe_best(output) -> dict:
    best = _field(output, "best")
    if best is None:
        raise CheckFailed(f"search() returned {output.get('best_type', 'a non-dict')}, expected the best cfg as a dict")
    return best


def _check_best(case: dict, output, choices: dict | None) -> None:
    best = _describe_best(output)
    if choices is not None:
        if set(best) != set(choices):
            raise CheckFailed(
                f"search() returned {best} with keys {sorted(best)}; the best cfg must have exactly the keys of "
                f"search_space(): {sorted(choices)}"
            )
        for key, value in best.items():
            if not any(type(value) is type(c) and value == c for c in choices[key]):
                raise CheckFailed(
                    f"search() returned {best}: {value!r} is not one of the choices {choices[key]!r} for {key!r}; "
                    "return a configuration from search_space() (e.g. the best one evaluate() scored)"
                )
    params = _numel(_field(output, "best_shapes"))
    if params > MAX_PARAMETERS:
        raise CheckFailed(f"the best cfg {best} builds a model of {params} parameters, more than {MAX_PARAMETERS}")


def _check_retrain(case: dict, output) -> dict:
    best = _describe_best(output)
    y_test = case["y_test"]
    logits, untrained = _field(output, "logits"), _field(output, "untrained_logits")
    if not isinstance(logits, list) or len(logits) != RETRAIN_SEEDS:
        raise CheckFailed(f"expected test logits for {RETRAIN_SEEDS} retraining seeds")
    for value in [*logits, untrained]:
        if not isinstance(value, torch.Tensor) or value.shape != (len(y_test), 10):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckFailed(f"the retrained model's test output has shape {shape}, expected ({len(y_test)}, 10)")
    chance = (untrained.argmax(dim=1) == y_test).double().mean().item()
    if chance > MAX_UNTRAINED_ACCURACY:
        raise CheckFailed(
            f"build_model({best}) scores {chance:.2f} on the test images before any training; models must learn "
            "from the grader's training, not arrive knowing the answers"
        )
    accuracies = [(value.argmax(dim=1) == y_test).double().mean().item() for value in logits]
    mean = sum(accuracies) / len(accuracies)
    figures = ", ".join(f"{a:.3f}" for a in accuracies)
    if mean < MIN_TEST_ACCURACY:
        raise CheckFailed(
            f"the best cfg {best}, retrained with {RETRAIN_SEEDS} seeds, reaches mean test accuracy {mean:.3f} "
            f"({figures}), below the minimum {MIN_TEST_ACCURACY}"
        )
    return {"metric": mean, "message": f"best cfg {best}: test accuracy {mean:.4f} (seeds: {figures})"}


def check(case: dict, output) -> dict | None:
    """Check one case's output; raise CheckFailed saying what is wrong."""
    inputs = case["inputs"]
    if inputs["kind"] == "space":
        _check_space(output)
    elif inputs["kind"] == "build":
        _check_build(output)
    elif inputs["part"] == "budget":
        _check_budget(output)
    elif inputs["part"] == "best":
        _check_best(case, output, _field(output, "choices"))
    elif inputs["part"] == "retrain":
        return _check_retrain(case, output)
    else:
        raise CheckFailed(f"internal grader error: unknown case {case['name']!r}")
    return None

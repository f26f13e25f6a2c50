"""Grader for the ``nas_search`` lab: a search space, a model builder and a budgeted search.

Trust split (lab contract v2, docs/authoring-labs.md): ``cases`` and ``check`` run in the worker
and hold the held-out digits test split, images and labels; ``run.py`` runs in the sandbox, which
sees the training split only.

Inside, ``run.py`` hands the student's ``search`` an ``evaluate`` that trains ``build_model(cfg)``
with the grader's fixed recipe on part of the training split and returns the accuracy on the rest;
every call is counted here, by the worker (``harness.meter("trial")``), and that count is what
``search_budget`` checks. The best configuration is then retrained with three seeds on the whole
training split and each trained model leaves the sandbox as data: its ATen operators and tensors
(``labs.sandboxed.export_graph``). ``check`` runs those graphs on the test images with
``labs.trusted.run_graph`` (standard layers only, at most 10,000 numbers), after the student's
process has finished, and computes the accuracies, the "at chance before training" check and the
metric from those logits.
"""

from __future__ import annotations

import math

import torch

from labs.trusted import CheckFailed, digits_split, field, run_graph

DIGITS_TEST_SIZE = 450
DIGITS_SALT = 13  # keeps this lab's split of the digits (seed + 13) as it always was
SEARCH_TRAIN_SIZE = 1000  # of the 1347 training images; the other 347 are evaluate()'s validation set
# The grader's training recipe: full-batch Adam. 60 steps bring an MLP of 64 hidden units to about
# 0.97 test accuracy and a 16-unit one to 0.93, so configurations differ visibly; nine trainings
# (up to 7 trials and 3 retrains) of such models take about 2 s on one core.
TRAIN_STEPS = 60
DEFAULT_LR = 0.01
MAX_PARAMETERS = 10_000  # also the most numbers an exported model may hold (parameters, buffers, constants)
RETRAIN_SEEDS = 3
MIN_TEST_ACCURACY = 0.85
# Before any training a model should be at chance (0.1); far above it, it was not trained by us.
MAX_UNTRAINED_ACCURACY = 0.3
MAX_BUILT_CONFIGS = 24  # build_model is tried on every configuration of a space this small, else a sample


# --------------------------------------------------------------------------------------------
# cases: trusted, from the job's secret seed
# --------------------------------------------------------------------------------------------


def cases(seed: int) -> list[dict]:
    """Every hidden test, generated from the secret seed so inputs cannot be memorised."""
    gen = torch.Generator().manual_seed(seed)

    def draw() -> int:
        return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))

    x_train, y_train, x_test, y_test = digits_split(seed, test_size=DIGITS_TEST_SIZE, salt=DIGITS_SALT)
    n_trials = int(torch.randint(5, 8, (1,), generator=gen))
    search = {
        "kind": "search",
        "x_train": x_train,
        "y_train": y_train,
        "test_size": len(y_test),  # the batch each retrained model is exported for; the images stay here
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
        {
            "name": "retrained_test_accuracy",
            "points": 30,
            "inputs": {**search, "part": "retrain"},
            "x_test": x_test,
            "y_test": y_test,
        },
    ]


# --------------------------------------------------------------------------------------------
# check: trusted
# --------------------------------------------------------------------------------------------


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
    choices = field(output, "choices")
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
    built = field(output, "built")
    if not isinstance(built, list) or not built:
        raise CheckFailed("no configuration of search_space() could be built")
    signatures = set()
    for entry in built:
        cfg = field(entry, "cfg", "a built model")
        out_shape = field(entry, "output_shape", "a built model")
        if out_shape != [5, 10]:
            raise CheckFailed(f"build_model({cfg}) maps a (5, 64) input to {out_shape}, expected [5, 10] (logits)")
        if not field(entry, "output_finite", "a built model"):
            raise CheckFailed(f"build_model({cfg}) gives non-finite outputs on a (5, 64) input")
        shapes = field(entry, "shapes", "a built model")
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


def _trials(case: dict) -> int:
    """evaluate() calls the worker counted during this case (``harness.meter("trial")`` in run.py)."""
    return int(case.get("runtime", {}).get("meters", {}).get("trial", 0))


def _check_budget(case: dict, output) -> None:
    n_trials, trials = case["inputs"]["n_trials"], _trials(case)
    if trials > n_trials:
        raise CheckFailed(
            f"search called evaluate() {trials} times with n_trials={n_trials} (counted by the grader, outside "
            "your process); evaluate at most n_trials configurations (the evaluations beyond the budget raised an "
            "error that your search caught)"
        )
    if not trials:
        raise CheckFailed("search never called evaluate(); a search must evaluate at least one configuration")


def _describe_best(output) -> dict:
    best = field(output, "best")
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
    params = _numel(field(output, "best_shapes"))
    if params > MAX_PARAMETERS:
        raise CheckFailed(f"the best cfg {best} builds a model of {params} parameters, more than {MAX_PARAMETERS}")


def _test_logits(graph, case: dict, what: str) -> torch.Tensor:
    """A model exported in the sandbox, run here on the test images: its logits, or a failed check."""
    x_test = case["x_test"]
    try:
        logits = run_graph(graph, x_test, max_numbers=MAX_PARAMETERS)
    except CheckFailed as exc:
        raise CheckFailed(f"{what}: {exc}") from None
    if not isinstance(logits, torch.Tensor) or logits.shape != (len(x_test), 10) or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else f"{type(logits).__name__} of outputs"
        raise CheckFailed(
            f"{what}: the model's output on the test images is {shape}, expected ({len(x_test)}, 10) logits"
        )
    return logits


def _check_retrain(case: dict, output) -> dict:
    best = _describe_best(output)
    y_test = case["y_test"]
    if _trials(case):
        raise CheckFailed(
            f"evaluate() was called {_trials(case)} times after search() returned; trials belong inside search()"
        )
    graphs = field(output, "graphs")
    if not isinstance(graphs, list) or len(graphs) != RETRAIN_SEEDS:
        raise CheckFailed(f"expected {RETRAIN_SEEDS} retrained models; the result is malformed")
    untrained = _test_logits(field(output, "untrained_graph"), case, f"build_model({best}) before training")
    chance = (untrained.argmax(dim=1) == y_test).double().mean().item()
    if chance > MAX_UNTRAINED_ACCURACY:
        raise CheckFailed(
            f"build_model({best}) scores {chance:.2f} on the test images before any training; models must learn "
            "from the grader's training, not arrive knowing the answers"
        )
    accuracies = []
    for number, graph in enumerate(graphs, 1):
        logits = _test_logits(graph, case, f"build_model({best}) retrained with seed {number}")
        accuracies.append((logits.argmax(dim=1) == y_test).double().mean().item())
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
        _check_budget(case, output)
    elif inputs["part"] == "best":
        _check_best(case, output, field(output, "choices"))
    elif inputs["part"] == "retrain":
        return _check_retrain(case, output)
    else:
        raise CheckFailed(f"internal grader error: unknown case {case['name']!r}")
    return None

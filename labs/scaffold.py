"""``manage.py lab new <slug>``: a new lab folder that already works, for an instructor to edit.

The scaffold is a complete small lab on the lab contract v2 (write ``relu(x)`` without torch's
own; grader.py, run.py, reference.py, a timed case) with a correct solution, the four kinds of
wrong solution every lab ships and a benchmark cheat, so ``manage.py lab check`` passes on it from
the first minute; each file says what to change. Nothing here imports Django.
"""

from __future__ import annotations

from pathlib import Path

from labs.catalog import SLUG_RE, LabError

LAB_TOML = """slug = "{slug}"
title = "{title}"
summary = "One line for the course page: what students build and how it is ranked."
version = 1                      # bump whenever grader.py or the tests change
entry = "{entry}"
allowed_files = ["{entry}"]
resource_class = "cpu"           # cpu | gpu | gpu.xN
source_course = "Your course, lab N"
forbidden = ["torch.relu", "torch.nn.functional.relu", "torch.clamp", "torch.clamp_min"]
max_file_bytes = 65536
# world_size = 2                 # distributed labs: the most ranks a case runs on (docs/authoring-labs.md)

[limits]
wall_seconds = 30

[metric]
name = "time / torch"
unit = "x"
direction = "lower"
"""

README = """# {title}

_From: your course, lab N. Replace every paragraph of this file: it is what students read._

## Background
Why this matters and where it comes from (the lecture, the paper, the course this lab is from).

## Task
Write `relu(x)` in `{entry}`: the elementwise max(x, 0) of a float tensor of any shape, returning
a new tensor of the same shape and dtype, without calling torch's own ReLU or clamp.

## Interface
```python
def relu(x: torch.Tensor) -> torch.Tensor: ...
```

## How it is graded
Hidden tests call `relu` on random tensors of several shapes (1-D, 3-D, empty) and compare with
the exact result. `torch.relu`, `torch.nn.functional.relu`, `torch.clamp` and `torch.clamp_min` raise during grading.
The inputs are generated from a secret seed for each submission; the tests' names and messages are
shown to you, their inputs are not.

## Metric
Your time divided by torch's on a 1-million-element tensor (lower is better); it ranks correct
submissions on the leaderboard. Once every test passes, the grader times 20 calls of your relu
and 20 of torch's, alternating, each on fresh inputs revealed only when the call starts, on its
own clock; torch runs in a separate process where your code never ran, and every timed call's
result is checked.

## Hints
- `torch.where` keeps the dtype and shape.

## References
- The course's lecture notes.
"""

GRADER = '''"""Grader for the ``{slug}`` lab (scaffolded by ``manage.py lab new``; edit freely).

Trusted: runs in the worker, never in the sandbox. ``cases`` makes every test from the job's
secret seed, ``call_inputs`` one timed call's fresh inputs, ``check`` compares what the sandbox
returned with references computed here. run.py is what runs in the sandbox; reference.py is
torch's own relu, timed in a clean process next to the student's. See docs/authoring-labs.md.
"""

from __future__ import annotations

import torch

from labs.trusted import assert_close, check_timed_calls, timing_summary

SHAPES = ((7,), (3, 5, 11), (0,), (100_000,))
TIMED_SIZE = 1_000_000


def cases(seed: int, *, device: str = "cpu") -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in SHAPES:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        name = "shape_" + "x".join(str(n) for n in shape)
        out.append({{"name": name, "points": 20, "inputs": {{"x": x}}, "expected": x.clamp_min(0)}})
    out.append(
        {{
            "name": "speed",
            "points": 0,
            "inputs": {{}},
            "timed": {{"calls": 20, "warmup": 3, "reference": True, "outputs": {{"out": [TIMED_SIZE]}}}},
        }}
    )
    return out


def call_inputs(case: dict, seed: int) -> dict:
    """One timed call's input, from a secret seed drawn as the call starts."""
    return {{"x": torch.randn(TIMED_SIZE, generator=torch.Generator().manual_seed(seed))}}


def check(case: dict, output) -> dict | None:
    if "timed" in case:
        check_timed_calls(case, output, lambda inputs: {{"out": inputs["x"].clamp_min(0)}}, rtol=0.0, atol=0.0)
        summary = timing_summary(case)
        return {{"metric": summary["ratio"], "message": summary["message"]}}
    assert_close(output, case["expected"], what="relu(x)", rtol=0.0, atol=0.0)
    return None
'''

RUN = '''"""What runs in the sandbox, next to the student's code: call relu() on a test's inputs, or on
one timed call's. It decides nothing: the worker checks what comes back."""


def run(module, inputs: dict, harness):
    return module.relu(inputs["x"])


def timed(module, inputs: dict, harness):
    return {{"out": module.relu(inputs["x"])}}
'''

REFERENCE = '''"""torch's own relu behind the student's interface: what the timed case compares against, in a
clean process where no student code runs."""

import torch


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)
'''

STARTER = '''"""{title}: write relu(x) without torch's own ReLU. See README.md."""

import torch


def relu(x: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError("write relu(x): the elementwise max(x, 0)")
'''

CORRECT = """import torch


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, torch.zeros_like(x))
"""

# name -> (the student file, expected.toml): the four kinds every lab ships, and a benchmark cheat.
WRONG = {
    "calls_torch_relu": (
        "import torch\n\n\ndef relu(x):\n    return torch.relu(x)\n",
        'verdict = "failed"\nreason = "forbidden_call"\nmessages = ["forbidden call: torch.relu()"]\n',
    ),
    "leaky": (
        "import torch\n\n\ndef relu(x):\n    return torch.where(x > 0, x, 0.01 * x)  # subtly wrong: leaky\n",
        'verdict = "failed"\nreason = "wrong_answer"\nmessages = ["relu(x): max abs error"]\n',
    ),
    "crashes": (
        "def relu(x):\n    return x.relu_not_a_method()\n",
        'verdict = "failed"\nmessages = ["AttributeError"]\n',
    ),
    "skips_timed_work": (
        "import torch\n\n\ndef relu(x):\n"
        "    if x.numel() == 1_000_000:  # only the timed calls are this big\n"
        "        return x  # a benchmark cheat: the timed calls' results are checked too\n"
        "    return torch.where(x > 0, x, torch.zeros_like(x))\n",
        'verdict = "failed"\nreason = "wrong_answer"\nscore = 100.0\nmessages = ["returned a wrong \'out\'"]\n',
    ),
    "hangs": (
        "def relu(x):\n    while True:\n        pass\n",
        'verdict = "timed_out"\nreason = "time_limit"\nmessages = ["Time limit exceeded"]\n\n'
        "[limits]\nwall_seconds = 5  # a hang need not cost the lab's whole wall time in lab check\n",
    ),
}


def create_lab(slug: str, root: Path, *, title: str | None = None, entry: str | None = None) -> Path:
    """Write the scaffold to ``root/slug`` and return the folder; refuses to overwrite anything."""
    if not SLUG_RE.match(slug):
        raise LabError(f"'{slug}' is not a lab slug: use lower_snake_case, 2 to 49 characters, e.g. 'flash_attention'")
    folder = Path(root) / slug
    if folder.exists():
        raise LabError(f"{folder} already exists; pick another slug or remove it first")
    entry = entry or f"{slug}.py"
    title = title or slug.replace("_", " ").capitalize()
    fields = {"slug": slug, "title": title, "entry": entry}
    files = {
        "lab.toml": LAB_TOML.format(**fields),
        "README.md": README.format(**fields),
        "grader.py": GRADER.format(**fields),
        "run.py": RUN.format(**fields),
        "reference.py": REFERENCE.format(**fields),
        f"starter/{entry}": STARTER.format(**fields),
        f"solutions/correct/{entry}": CORRECT,
    }
    for name, (source, expected) in WRONG.items():
        files[f"solutions/wrong/{name}/{entry}"] = source
        files[f"solutions/wrong/{name}/expected.toml"] = expected
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder

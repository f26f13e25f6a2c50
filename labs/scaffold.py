"""``manage.py lab new <slug>``: a new lab folder that already works, for an instructor to edit.

The scaffold is a complete small lab (write ``relu(x)`` without torch's own) with a correct
solution and the four kinds of wrong solution every lab ships, so ``manage.py lab check`` passes
on it from the first minute; each file says what to change. Nothing here imports Django.
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
# world_size = 2                 # distributed labs: ranks per job (see labs/ranks.py)

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
Your time divided by torch's on a 1-million-element tensor, measured in the same job (lower is
better); it ranks correct submissions on the leaderboard.

## Hints
- `torch.where` keeps the dtype and shape.

## References
- The course's lecture notes.
"""

GRADER = '''"""Grader for the ``{slug}`` lab (scaffolded by ``manage.py lab new``; edit freely).

``cases`` and ``check`` are trusted and run in the worker; ``run`` is shipped alone into the
sandbox, so it imports what it needs inside its body. See docs/authoring-labs.md.
"""

from __future__ import annotations

import torch

from labs.grading import CheckFailed, assert_close

SHAPES = ((7,), (3, 5, 11), (0,), (100_000,))


def cases(seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in SHAPES:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        name = "shape_" + "x".join(str(n) for n in shape)
        out.append({{"name": name, "points": 20, "inputs": {{"kind": "relu", "x": x}}, "expected": x.clamp_min(0)}})
    out.append({{"name": "speed", "points": 0, "inputs": {{"kind": "speed", "n": 1_000_000}}}})
    return out


def run(module, inputs: dict):
    import time

    import torch

    if inputs["kind"] == "relu":
        return module.relu(inputs["x"])
    x = torch.randn(inputs["n"])
    reference = harness.original("torch.relu")  # noqa: F821 (set by the runner)
    harness.begin("speed")  # noqa: F821 - the worker's own clock encloses the timed region
    ratios = []
    for _ in range(5):
        started = time.perf_counter()
        module.relu(x)
        mine = time.perf_counter() - started
        started = time.perf_counter()
        reference(x)
        ratios.append(mine / max(time.perf_counter() - started, 1e-9))
    harness.end("speed")  # noqa: F821
    return {{"ratio": sorted(ratios)[len(ratios) // 2]}}


def check(case: dict, output) -> dict | None:
    if case["inputs"]["kind"] == "relu":
        assert_close(output, case["expected"], what="relu(x)", rtol=0.0, atol=0.0)
        return None
    ratio = output.get("ratio") if isinstance(output, dict) else None
    if not isinstance(ratio, float) or ratio <= 0:
        raise CheckFailed("the timing run returned no ratio")
    return {{"metric": ratio, "message": f"{{ratio:.2f}}x torch.relu's time"}}
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

# name -> (the student file, expected.toml): the four kinds every lab ships.
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

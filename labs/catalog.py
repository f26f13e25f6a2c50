"""Load lab folders: ``lab.toml``, ``README.md``, ``starter/``, ``grader.py``, ``solutions/``.

A lab is data plus a grader. The portal reads metadata and instructions from here (and stores
them with ``manage.py sync_labs``); the runner reads the grader. Nothing here imports Django.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import ModuleType

LABS_ROOT = Path(os.environ.get("LABS_DIR", Path(__file__).resolve().parent))
# Labs instructors uploaded as zips and published from the staff pages: a folder the portal writes
# and the workers read (a shared volume in docker-compose.yml). Built-in labs win a slug clash.
UPLOADED_LABS_ROOT = Path(
    os.environ.get("AISYS_UPLOADED_LABS", Path(__file__).resolve().parent.parent / "var" / "uploaded-labs")
)
SLUG_RE = re.compile(r"^[a-z][a-z0-9_]{1,48}$")
FILE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.py$")
RESOURCE_CLASS_RE = re.compile(r"^(cpu|gpu|gpu\.x[2-8])$")
MAX_VISIBILITY_RULES = 50


class Visibility(StrEnum):
    """What a student sees of a test (a lab's ``[visibility]``, overridable per assignment).

    Hidden means name and points only, in every page, event and log line a student can reach
    (docs/authoring-labs.md, "Hidden tests"); staff always see everything.
    """

    VISIBLE = "visible"
    AFTER_DUE = "after_due"  # hidden until the student can no longer submit, then visible
    HIDDEN = "hidden"  # hidden from students always


class LabError(Exception):
    """A lab folder is malformed; the message names the file and what to fix."""


@dataclass(frozen=True)
class Limits:
    """Per-job resource limits; safe defaults, overridden by ``[limits]`` in lab.toml."""

    wall_seconds: float = 60.0
    cpu_seconds: float = 120.0
    memory_mb: int = 2048
    processes: int = 64
    file_size_mb: int = 64
    disk_mb: int = 256  # the job folder, and each of /tmp and /dev/shm, in the sandbox
    output_bytes: int = 1_000_000

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    direction: str  # "lower" or "higher" is better


@dataclass(frozen=True)
class Solution:
    """A reference submission shipped with the lab, with the outcome it must get."""

    name: str
    kind: str  # "correct" | "wrong" | "starter"
    files: dict[str, str]
    expected_verdict: str
    expected_messages: tuple[str, ...] = ()  # each in the summary or some test's message
    expected_reason: str | None = None
    expected_score: float | None = None
    limits: dict = field(default_factory=dict)  # overrides for grading this solution (a hang's wall time)
    path: Path | None = None


@dataclass(frozen=True)
class LabFolder:
    slug: str
    path: Path
    title: str
    summary: str
    version: int
    entry: str
    allowed_files: tuple[str, ...]
    resource_class: str
    limits: Limits
    metric: Metric | None
    source_course: str
    forbidden: tuple[str, ...]
    max_file_bytes: int
    world_size: int = 1
    builds_extensions: bool = False  # [build] extensions: the submission compiles C++/CUDA with load_inline
    readme: str = field(default="", repr=False)
    content_hash: str = ""
    # (test name pattern, Visibility) in order, first match wins; unmatched tests are visible
    test_visibility: tuple[tuple[str, str], ...] = ()

    @property
    def is_gpu(self) -> bool:
        return self.resource_class.startswith("gpu")

    @property
    def run_module(self) -> Path:
        """``run.py``: what runs in the sandbox, next to the student's code."""
        return self.path / "run.py"

    @property
    def reference_module(self) -> Path | None:
        """``reference.py``: the library's implementation of the student's interface, timed in a
        clean process next to the student's calls (a timed case with ``reference``)."""
        path = self.path / "reference.py"
        return path if path.is_file() else None

    def starter_files(self) -> dict[str, str]:
        return _read_py_files(self.path / "starter")

    def solutions(self) -> list[Solution]:
        """The starter (expected to fail), the correct solution and every wrong one, each with the
        outcome its ``expected.toml`` asks for (see docs/authoring-labs.md)."""
        found = [_solution("starter", "starter", self.path / "starter", default_verdict="failed")]
        correct = self.path / "solutions" / "correct"
        if correct.is_dir():
            found.append(_solution("correct", "correct", correct, default_verdict="succeeded"))
        wrong_root = self.path / "solutions" / "wrong"
        for folder in sorted(p for p in wrong_root.glob("*") if p.is_dir()) if wrong_root.is_dir() else []:
            found.append(_solution(folder.name, "wrong", folder, default_verdict="failed"))
        return found

    def load_grader(self) -> ModuleType:
        """Import this lab's grader.py (trusted code: only the runner outside the sandbox calls this)."""
        grader_path = self.path / "grader.py"
        spec = importlib.util.spec_from_file_location(f"aisys_lab_grader_{self.slug}", grader_path)
        if spec is None or spec.loader is None:
            raise LabError(f"{grader_path}: cannot be imported")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name in ("cases", "check"):
            if not callable(getattr(module, name, None)):
                raise LabError(f"{grader_path}: must define a function {name}()")
        return module


EXPECTED_KEYS = {"verdict", "reason", "messages", "score", "limits"}
VERDICTS = ("succeeded", "failed", "timed_out", "error")


def _solution(name: str, kind: str, folder: Path, *, default_verdict: str) -> Solution:
    where = folder / "expected.toml"
    expected = _load_toml(where) if where.exists() else {}
    unknown = set(expected) - EXPECTED_KEYS
    if unknown:
        raise LabError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(EXPECTED_KEYS)}")
    verdict = expected.get("verdict", default_verdict)
    if verdict not in VERDICTS:
        raise LabError(f"{where}: verdict '{verdict}' must be one of {', '.join(VERDICTS)}")
    messages = expected.get("messages", [])
    if not isinstance(messages, list) or not all(isinstance(m, str) for m in messages):
        raise LabError(f"{where}: messages must be a list of strings")
    limits = expected.get("limits", {})
    unknown = set(limits) - set(Limits().__dict__)
    if unknown:
        raise LabError(f"{where}: unknown [limits] keys {sorted(unknown)}")
    score = expected.get("score")
    return Solution(
        name=name,
        kind=kind,
        files=_read_py_files(folder),
        expected_verdict=verdict,
        expected_messages=tuple(messages),
        expected_reason=expected.get("reason"),
        expected_score=float(score) if score is not None else None,
        limits=dict(limits),
        path=folder,
    )


def visibility_rules(table, where: str) -> tuple[tuple[str, str], ...]:
    """``{pattern: level}`` (a ``[visibility]`` table: shell-style patterns of test names, e.g.
    ``"edge_*" = "after_due"``) as ordered rules; raises LabError naming the bad entry."""
    if not isinstance(table, dict):
        raise LabError(f"{where}: [visibility] must be a table of test name pattern = visible|after_due|hidden")
    if len(table) > MAX_VISIBILITY_RULES:
        raise LabError(f"{where}: [visibility] has {len(table)} rules; at most {MAX_VISIBILITY_RULES}")
    rules = []
    for pattern, level in table.items():
        if not pattern.strip() or len(pattern) > 200:
            raise LabError(f"{where}: [visibility] pattern {pattern[:40]!r} must be 1 to 200 characters")
        if level not in tuple(Visibility):
            raise LabError(f"{where}: [visibility] {pattern!r} = {str(level)[:40]!r}: use visible, after_due or hidden")
        rules.append((pattern, str(level)))
    return tuple(rules)


def _load_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"{path} is missing") from None
    except tomllib.TOMLDecodeError as exc:
        raise LabError(f"{path}: invalid TOML: {exc}") from None


def _read_py_files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.py"))} if folder.is_dir() else {}


def content_hash(folder: Path) -> str:
    """A hash of every file of the lab, so a change without a version bump is noticed."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def load_lab(path: Path | str) -> LabFolder:
    folder = Path(path).resolve()
    meta = _load_toml(folder / "lab.toml")
    where = folder / "lab.toml"

    def need(key: str, kind: type):
        value = meta.get(key)
        if not isinstance(value, kind):
            raise LabError(f"{where}: '{key}' must be a {kind.__name__}")
        return value

    slug = need("slug", str)
    if not SLUG_RE.match(slug) or slug != folder.name:
        raise LabError(f"{where}: slug '{slug}' must be lower_snake_case and equal the folder name '{folder.name}'")
    entry = need("entry", str)
    allowed = tuple(meta.get("allowed_files", [entry]))
    for name in allowed:
        if not FILE_NAME_RE.match(name):
            raise LabError(f"{where}: allowed file '{name}' must be a plain Python module name like 'my_op.py'")
    if entry not in allowed:
        raise LabError(f"{where}: entry '{entry}' must be one of allowed_files {list(allowed)}")
    resource_class = meta.get("resource_class", "cpu")
    if not RESOURCE_CLASS_RE.match(resource_class):
        raise LabError(f"{where}: resource_class '{resource_class}' must be cpu, gpu or gpu.xN")
    limit_defaults = Limits()
    limits_table = meta.get("limits", {})
    unknown = set(limits_table) - set(limit_defaults.__dict__)
    if unknown:
        raise LabError(f"{where}: unknown [limits] keys {sorted(unknown)}; known: {sorted(limit_defaults.__dict__)}")
    limits = Limits(**{**limit_defaults.__dict__, **limits_table})
    metric = None
    if "metric" in meta:
        table = meta["metric"]
        if table.get("direction") not in ("lower", "higher"):
            raise LabError(f"{where}: [metric] direction must be 'lower' or 'higher'")
        metric = Metric(
            name=str(table.get("name", "metric")), unit=str(table.get("unit", "")), direction=table["direction"]
        )
    build = meta.get("build", {})
    if (
        not isinstance(build, dict)
        or set(build) - {"extensions"}
        or not isinstance(build.get("extensions", False), bool)
    ):
        raise LabError(f"{where}: [build] takes one key, extensions = true or false")
    readme_path = folder / "README.md"
    if not readme_path.exists():
        raise LabError(f"{readme_path} is missing: students need instructions")
    for name, what in (("grader.py", "cases() and check()"), ("run.py", "run(module, inputs, harness)")):
        if not (folder / name).exists():
            raise LabError(f"{folder / name} is missing: a lab defines {what} there (docs/authoring-labs.md)")
    return LabFolder(
        slug=slug,
        path=folder,
        title=need("title", str),
        summary=meta.get("summary", ""),
        version=need("version", int),
        entry=entry,
        allowed_files=allowed,
        resource_class=resource_class,
        limits=limits,
        metric=metric,
        source_course=meta.get("source_course", ""),
        forbidden=tuple(meta.get("forbidden", ())),
        max_file_bytes=int(meta.get("max_file_bytes", 256 * 1024)),
        world_size=int(meta.get("world_size", 1)),
        builds_extensions=build.get("extensions", False),
        readme=readme_path.read_text(encoding="utf-8"),
        content_hash=content_hash(folder),
        test_visibility=visibility_rules(meta.get("visibility", {}), str(where)),
    )


def lab_roots() -> list[Path]:
    """Where labs are found, in order of precedence: built-in, then uploaded."""
    return [LABS_ROOT, UPLOADED_LABS_ROOT]


def discover_labs(root: Path | str | None = None) -> list[LabFolder]:
    """Every lab folder holding a lab.toml, sorted by slug: under ``root``, or (by default) the
    built-in labs and the published uploads."""
    if root is not None:
        return [load_lab(p.parent) for p in sorted(Path(root).glob("*/lab.toml"))]
    found: dict[str, Path] = {}
    for folder in lab_roots():
        for path in sorted(folder.glob("*/lab.toml")):
            found.setdefault(path.parent.name, path.parent)
    return [load_lab(found[slug]) for slug in sorted(found)]


def find_lab(slug: str, root: Path | str | None = None) -> LabFolder:
    if not SLUG_RE.match(slug):
        raise LabError(f"'{slug}' is not a lab slug")
    roots = [Path(root)] if root else lab_roots()
    for folder in roots:
        if (folder / slug / "lab.toml").exists():
            return load_lab(folder / slug)
    known = ", ".join(lab.slug for lab in discover_labs(root)) or "none"
    raise LabError(f"no lab '{slug}' in {' or '.join(str(r) for r in roots)} (known: {known})")

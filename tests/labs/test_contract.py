"""Every lab of the catalog on the lab contract v2, read (not run): what docs/authoring-labs.md asks
of grader.py and run.py, checked once for all labs instead of in each lab's tests."""

from __future__ import annotations

import ast
import sys

import pytest

from labs.catalog import discover_labs

LABS = discover_labs()
# What run.py may import in the sandbox: the standard library, torch, numpy, triton and the runner's
# lib/ (kernels.bench, labs.sandboxed); nothing else of the project.
SANDBOX_IMPORTS = ("__future__", "torch", "numpy", "triton", "kernels.bench", "labs.sandboxed")


def _tree(path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _functions(tree: ast.Module) -> set[str]:
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def _imports(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("lab", LABS, ids=lambda lab: lab.slug)
def test_run_py_is_a_module_that_imports_only_what_the_sandbox_ships(lab):
    tree = _tree(lab.run_module)
    for name in _imports(tree):
        shipped = any(name == allowed or name.startswith(allowed + ".") for allowed in SANDBOX_IMPORTS)
        assert shipped or name.partition(".")[0] in sys.stdlib_module_names, f"{lab.slug}: run.py imports {name}"
    assert "run" in _functions(tree)
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not calls & {"exec", "eval", "globals", "compile"}, f"{lab.slug}: run.py calls {calls}"


@pytest.mark.parametrize("lab", LABS, ids=lambda lab: lab.slug)
def test_grader_py_is_trusted_code_only(lab):
    grader = _functions(_tree(lab.path / "grader.py"))
    assert {"cases", "check"} <= grader and "run" not in grader
    timed = "timed" in _functions(_tree(lab.run_module))
    assert timed == ("call_inputs" in grader), f"{lab.slug}: a timed case needs run.timed and grader.call_inputs"
    if lab.reference_module is not None:
        assert timed, f"{lab.slug}: reference.py is only timed in a timed case"


def test_every_lab_in_the_catalog_is_checked():
    assert len(LABS) >= 10

"""The sandbox side of the ``autodiff`` lab: build a case's graph from the student's ``Tensor`` /
``Dual`` ops, run it, and return plain data; or build and differentiate one timed chain.

Shipped into the sandbox as a file (lab contract v2) and imported before the student's module.
Values and gradients go back as tensors when they are numpy arrays, and as the name of their type
otherwise, so the checker can say that numpy is the backend. Nothing here decides a grade:
``grader.py`` checks every result in the worker.
"""

from __future__ import annotations

import gc

import numpy as np
import torch

DEFAULT_RECURSION_LIMIT = 1000
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "matmul": lambda a, b: a @ b,
}
WITH_NUMBER = {
    "add_scalar": lambda a, c: a + c,
    "radd_scalar": lambda a, c: c + a,
    "sub_scalar": lambda a, c: a - c,
    "rsub_scalar": lambda a, c: c - a,
    "mul_scalar": lambda a, c: a * c,
    "rmul_scalar": lambda a, c: c * a,
    "div_scalar": lambda a, c: a / c,
    "rdiv_scalar": lambda a, c: c / a,
    "pow": lambda a, c: a**c,
    "neg": lambda a, c: -a,
}


def _plain(value):
    """A numpy value as a tensor for the worker, or the name of what it is instead."""
    if value is None:
        return None
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.array(value)
        if array.dtype.kind in "biuf":
            return torch.from_numpy(array)
        return f"numpy array of dtype {array.dtype}"
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _apply(node: list, values: list):
    """One node of a program (``[op, input, ...args]``) from the student's ops."""
    op, a = node[0], values[node[1]]
    if op in BINARY:
        return BINARY[op](a, values[node[2]])
    c = node[2] if len(node) > 2 else None
    if op in WITH_NUMBER:
        return WITH_NUMBER[op](a, c)
    if op in ("exp", "log", "relu", "sin"):
        return getattr(a, op)()
    if op == "sum":
        return a.sum() if c is None else a.sum(c)
    if op in ("broadcast_to", "reshape"):
        return getattr(a, op)(c)
    if op == "transpose":
        return a.transpose() if c is None else a.transpose(c)
    raise ValueError(f"unknown op {op!r}")


def _build(program: dict, leaf) -> list:
    """The program's nodes from the student's ops; ``leaf(k)`` makes leaf k."""
    values = []
    for node, label in zip(program["nodes"], program["labels"], strict=True):
        try:
            value = leaf(node[1]) if node[0] == "leaf" else _apply(node, values)
        except Exception as exc:
            exc.add_note(f"(raised while the grader computed {label})")
            raise
        values.append(value)
    return values


def _tensors(module, program: dict) -> list:
    values = _build(program, lambda k: module.Tensor(program["leaves"][k].numpy().copy()))
    for value, label in zip(values, program["labels"], strict=True):
        if not isinstance(value, module.Tensor):
            raise TypeError(f"{label} gave a {type(value).__name__}, expected a Tensor")
    return values


def _deep(harness, n_ops: int, call):
    """Run ``call`` at Python's default recursion limit, with a hint when it is too deep."""
    harness.original("sys.setrecursionlimit")(DEFAULT_RECURSION_LIMIT)
    try:
        return call()
    except RecursionError as exc:
        exc.add_note(
            "find_topo_sort or backward recursed once per node and hit Python's recursion limit on a "
            f"{n_ops:,}-operation chain: walk the graph with an explicit stack (README, 'Deep graphs')"
        )
        raise


def _chain(module, spec: dict, n_ops: int) -> list:
    """x, w, c, then ``n_ops`` operations cycling v * w, exp, log, v + c: node 3 + k is operation k."""
    x, w, c = (module.Tensor(spec[k].numpy().copy()) for k in ("x", "w", "c"))
    nodes, v = [x, w, c], x
    for k in range(n_ops):
        step = k % 4
        v = v * w if step == 0 else v.exp() if step == 1 else v.log() if step == 2 else v + c
        nodes.append(v)
    return nodes


def _chain_grads(nodes: list, samples: list[int]) -> dict:
    return {
        "x": _plain(nodes[0].grad),
        "w": _plain(nodes[1].grad),
        "c": _plain(nodes[2].grad),
        "samples": [_plain(nodes[i].grad) for i in samples],
    }


# --------------------------------------------------------------------------------------------
# one function per kind of case
# --------------------------------------------------------------------------------------------


def _program(module, inputs: dict, harness) -> dict:
    values = _tensors(module, inputs)
    result = {"values": [_plain(v.data) for v in values]}
    if inputs["backward"]:
        out_grad = inputs["out_grad"]
        if out_grad is None:
            values[-1].backward()
        else:
            values[-1].backward(out_grad.numpy().copy())
        result["grads"] = [_plain(getattr(v, "grad", None)) for v in values]
    return result


def _topo(module, inputs: dict, harness) -> list:
    result = []
    for graph in inputs["graphs"]:
        values = _tensors(module, graph)
        index = {id(v): k for k, v in enumerate(values)}
        order = module.find_topo_sort([values[r] for r in graph["roots"]])
        if not isinstance(order, (list, tuple)):
            raise TypeError(f"find_topo_sort returned a {type(order).__name__}, expected a list of Tensors")
        result.append(
            {
                "order": [index.get(id(n), -1) for n in order],
                "unknown": [type(n).__name__ for n in order if id(n) not in index],
            }
        )
    return result


def _canonical(a, b):
    """ZOMI's f(x1, x2) = ln x1 + x1 x2 - sin x2, from Duals or Tensors alike."""
    return a.log() + a * b - b.sin()


def _number(value, what: str):
    if isinstance(value, (int, float, np.integer, np.floating)) or (isinstance(value, np.ndarray) and value.size == 1):
        return float(value)
    return f"{what} is a {type(value).__module__}.{type(value).__qualname__}, expected a number"


def _forward_mode(module, inputs: dict, harness) -> dict:
    dual = module.Dual
    x1, x2 = inputs["point"]
    result = {}
    for label, seeds in (("d_x1", (1.0, 0.0)), ("d_x2", (0.0, 1.0))):
        out = _canonical(dual(x1, seeds[0]), dual(x2, seeds[1]))
        result[label] = [_number(out.value, ".value"), _number(out.tangent, ".tangent")]
    program = inputs["program"]
    values = _build(program, lambda k: dual(program["point"][k], program["tangent"][k]))
    result["program"] = [_number(values[-1].value, ".value"), _number(values[-1].tangent, ".tangent")]
    try:
        a, b = module.Tensor(np.array(x1)), module.Tensor(np.array(x2))
        out = _canonical(a, b)
        out.backward()
        result["reverse"] = [_plain(out.data), _plain(a.grad), _plain(b.grad)]
    except Exception as exc:  # reported next to the forward-mode results, not instead of them
        result["reverse_error"] = f"{type(exc).__name__}: {exc}"
    return result


def _deep_chain(module, inputs: dict, harness) -> dict:
    spec, n_ops = inputs["chain"], inputs["n_ops"]
    nodes = _chain(module, spec, n_ops)
    index = {id(v): k for k, v in enumerate(nodes)}
    order = _deep(harness, n_ops, lambda: module.find_topo_sort([nodes[-1]]))
    positions = torch.tensor([index.get(id(n), -1) for n in order], dtype=torch.int64)
    _deep(harness, n_ops, lambda: nodes[-1].backward(spec["out_grad"].numpy().copy()))
    return {"order": positions, "grads": _chain_grads(nodes, spec["samples"])}


CASES = {"program": _program, "topo": _topo, "forward_mode": _forward_mode, "deep_chain": _deep_chain}


def run(module, inputs: dict, harness):
    """One correctness case."""
    kind = inputs["kind"]
    if kind not in CASES:
        raise ValueError(f"unknown case kind {kind!r}")
    return CASES[kind](module, inputs, harness)


# --------------------------------------------------------------------------------------------
# the timed case: the worker times each call on its own clock
# --------------------------------------------------------------------------------------------


def _array(value):
    """A gradient as a plain numpy array for the worker's fingerprint (anything else is named there)."""
    return np.asarray(value) if isinstance(value, np.ndarray) else value


def _forward_backward(module, inputs: dict) -> dict:
    nodes = _chain(module, inputs, inputs["n_ops"])
    nodes[-1].backward(inputs["out_grad"].numpy().copy())
    samples = [nodes[i].grad for i in inputs["samples"]]
    if not all(isinstance(g, np.ndarray) for g in samples):
        raise TypeError("backward() left the .grad of an intermediate node of the chain unset or not a numpy array")
    return {
        "x": _array(nodes[0].grad),
        "w": _array(nodes[1].grad),
        "c": _array(nodes[2].grad),
        "samples": np.stack(samples),
    }


def timed(module, inputs: dict, harness) -> dict:
    """One timed call: build a fresh chain from this call's leaves (x, w, c), run ``backward`` with
    its ``out_grad``, and return the grads of x, w, c and of the sampled intermediate nodes (stacked).

    Building is part of the call, so work moved into the forward pass is timed too; the worker
    fingerprints every returned gradient before the call counts as done. Python's cyclic garbage
    collector is paused during the call: its full scans of the whole process (torch's objects
    included) would otherwise cost more than the chain itself, at moments no student controls.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _deep(harness, inputs["n_ops"], lambda: _forward_backward(module, inputs))
    finally:
        if collecting:
            gc.enable()

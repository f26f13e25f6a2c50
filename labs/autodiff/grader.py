"""Grader for the ``autodiff`` lab: reverse mode on a numpy ``Tensor``, forward mode on ``Dual``.

Trust split (lab contract v2, docs/authoring-labs.md): ``cases``, ``call_inputs`` and ``check``
run in the worker and hold every reference; ``run.py`` is what runs in the sandbox, next to the
student's module.

A gradient case is a small *program*: a list of nodes, each a leaf or one operation on earlier
nodes. ``run`` builds it from the student's ``Tensor`` ops and calls ``backward``; here the same
program is evaluated with plain numpy, and the reference adjoint of every node (leaves and
intermediate nodes) is its central difference: perturb the node's value, recompute what depends
on it, difference the loss. No autodiff library computes a reference, so none is trusted.
Checking nodes from the output backwards names the first wrong adjoint, and with it the one
operation whose backward is wrong.

The metric is a timed case: the worker times ``run.timed`` (build a fresh 10,000-operation chain
from one call's leaves, drawn by ``call_inputs`` and revealed only as the call starts, then
``backward``) on its own clock, and checks every call's gradients through their fingerprints.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from labs.trusted import CheckFailed, assert_close, check_timed_calls, field, timing_summary

# Five-point central differences in float64: truncation h^4 f^(5) / 30 plus rounding about
# 1e-16 |L| / h. With h = 3e-4 they agree with torch autograd's exact adjoints to within 4e-9
# (relative to 1 + |g|) over seeds 0-29, far inside the 1e-6 allowed (tests/labs/test_autodiff.py
# keeps checking a few seeds); a wrong gradient is off by far more, a float32 backend by about 1e-4.
# (h = 1e-3 reached 2e-8, h = 2e-4 1.5e-8, the two-point stencil at 1e-5 2e-7.) relu's inputs stay
# 0.2 away from its kink, far beyond 2h.
FD_STEP = 3e-4
FD_STENCIL = ((2, -1.0), (1, 8.0), (-1, -8.0), (-2, 1.0))  # (multiple of the step, weight) / 12h
GRAD_RTOL = GRAD_ATOL = 1e-6
# Forward values are the same numpy ops as the reference, so only summation order differs.
VALUE_RTOL, VALUE_ATOL = 1e-10, 1e-12
# Forward and reverse mode on f(x1, x2) = ln x1 + x1 x2 - sin x2 differ only by rounding.
EXACT_RTOL, EXACT_ATOL = 1e-12, 1e-12
CANONICAL_POINT = (2.0, 5.0)

CHAIN_OPS = 10_000  # operations in the deep chain and in each timed chain
CHAIN_SIZE = 32  # elements of every node of a chain: small, so the graph's bookkeeping is what is timed
CHAIN_SAMPLES = 4  # intermediate nodes of each chain whose gradient is checked too
CHAIN_RTOL, CHAIN_ATOL = 1e-9, 1e-12  # same numpy ops as the reference; only accumulation order differs
# Timed calls, each a fresh chain built and differentiated (30-70 ms for a plain solution on two
# loaded cores): the warm-up calls are not counted; the metric is the median of the rest.
BENCH_CALLS, BENCH_WARMUP = 15, 2

BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@"}
SCALAR = {
    "add_scalar": "{a} + {c}",
    "radd_scalar": "{c} + {a}",
    "sub_scalar": "{a} - {c}",
    "rsub_scalar": "{c} - {a}",
    "mul_scalar": "{a} * {c}",
    "rmul_scalar": "{c} * {a}",
    "div_scalar": "{a} / {c}",
    "rdiv_scalar": "{c} / {a}",
}
UNARY = ("neg", "exp", "log", "relu", "sin")


# --------------------------------------------------------------------------------------------
# programs: built and evaluated here, rebuilt from the student's ops by run()
# --------------------------------------------------------------------------------------------


class _Program:
    """Nodes in creation order: ``["leaf", k]`` or ``[op, node, ...args]``; labels for messages."""

    def __init__(self) -> None:
        self.nodes: list[list] = []
        self.leaves: list[np.ndarray] = []
        self.labels: list[str] = []

    def name(self, index: int) -> str:
        return self.labels[index].split(" = ")[0]

    def leaf(self, value: np.ndarray) -> int:
        self.nodes.append(["leaf", len(self.leaves)])
        self.labels.append(f"x{len(self.leaves)}")
        self.leaves.append(np.asarray(value, dtype=np.float64))
        return len(self.nodes) - 1

    def op(self, op: str, node: int, *args) -> int:
        a = self.name(node)
        if op in BINARY:
            expr = f"{a} {BINARY[op]} {self.name(args[0])}"
        elif op in SCALAR:
            expr = SCALAR[op].format(a=a, c=args[0])
        elif op == "neg":
            expr = f"-{a}"
        elif op == "pow":
            expr = f"{a} ** {args[0]}"
        elif op in UNARY:
            expr = f"{a}.{op}()"
        elif op == "sum":
            expr = f"{a}.sum()" if args[0] is None else f"{a}.sum(axes={args[0]!r})"
        elif op in ("broadcast_to", "reshape"):
            expr = f"{a}.{op}({args[0]!r})"
        elif op == "transpose":
            expr = f"{a}.transpose()" if args[0] is None else f"{a}.transpose({args[0]!r})"
        else:
            raise ValueError(f"unknown op {op!r}")
        index = len(self.nodes)
        self.nodes.append([op, node, *args])
        self.labels.append(f"v{index} = {expr}")
        return index

    def inputs(self, **extra) -> dict:
        return {
            "nodes": [list(n) for n in self.nodes],
            "leaves": [torch.from_numpy(v.copy()) for v in self.leaves],
            "labels": list(self.labels),
            **extra,
        }


def _node_args(node: list) -> tuple[int, ...]:
    """The node indices a node is computed from (repeated when an op uses one node twice)."""
    if node[0] == "leaf":
        return ()
    return (node[1], node[2]) if node[0] in BINARY else (node[1],)


def _np_apply(node: list, values: list[np.ndarray]) -> np.ndarray:
    """One operation of a program in plain numpy: the reference semantics of the student's ops."""
    op, a = node[0], values[node[1]]
    if op in BINARY:
        b = values[node[2]]
        return {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "matmul": np.matmul}[op](a, b)
    if op in SCALAR:
        c = node[2]
        return {
            "add_scalar": lambda: a + c,
            "radd_scalar": lambda: c + a,
            "sub_scalar": lambda: a - c,
            "rsub_scalar": lambda: c - a,
            "mul_scalar": lambda: a * c,
            "rmul_scalar": lambda: c * a,
            "div_scalar": lambda: a / c,
            "rdiv_scalar": lambda: c / a,
        }[op]()
    if op == "neg":
        return -a
    if op == "pow":
        return a ** node[2]
    if op == "exp":
        return np.exp(a)
    if op == "log":
        return np.log(a)
    if op == "relu":
        return np.maximum(a, 0.0)
    if op == "sin":
        return np.sin(a)
    if op == "sum":
        return np.asarray(a.sum(axis=node[2]))
    if op == "broadcast_to":
        return np.broadcast_to(a, node[2]).copy()
    if op == "reshape":
        return a.reshape(node[2])
    if op == "transpose":
        return np.transpose(a, node[2])
    raise ValueError(f"unknown op {op!r}")


def _evaluate(program: _Program, prefix: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Every node's value; with ``prefix``, the first nodes' values are taken as given."""
    values = list(prefix or [])
    for node in program.nodes[len(values) :]:
        values.append(program.leaves[node[1]] if node[0] == "leaf" else np.asarray(_np_apply(node, values)))
    return values


def _ancestors(nodes: list[list], root: int) -> set[int]:
    seen, stack = {root}, [root]
    while stack:
        for arg in _node_args(nodes[stack.pop()]):
            if arg not in seen:
                seen.add(arg)
                stack.append(arg)
    return seen


def _central_differences(program: _Program, out_grad: np.ndarray) -> dict[int, np.ndarray]:
    """d(sum(out_grad * output)) / d(node) for every node the output depends on, numerically."""
    base = _evaluate(program)
    output = len(program.nodes) - 1
    grads = {}

    def loss(index: int, element: int, step: float) -> float:
        moved = base[index].copy()
        moved.flat[element] += step
        return float(np.sum(out_grad * _evaluate(program, base[:index] + [moved])[-1]))

    for index in sorted(_ancestors(program.nodes, output)):
        value = base[index]
        grad = [_derivative(functools.partial(loss, index, i)) for i in range(value.size)]
        grads[index] = np.array(grad).reshape(value.shape)
    return grads


def _derivative(f) -> float:
    """f'(0) of a scalar function of one step, by the five-point central difference."""
    return sum(weight * f(multiple * FD_STEP) for multiple, weight in FD_STENCIL) / (12 * FD_STEP)


def _program_case(name: str, points: int, program: _Program, *, out_grad: np.ndarray | None, backward: bool) -> dict:
    values = _evaluate(program)
    case = {
        "name": name,
        "points": points,
        "inputs": program.inputs(
            kind="program",
            backward=backward,
            out_grad=None if out_grad is None else torch.from_numpy(out_grad.copy()),
        ),
        "expected_values": [torch.from_numpy(np.array(v)) for v in values],
    }
    if backward:
        seed = np.ones_like(values[-1]) if out_grad is None else out_grad
        grads = _central_differences(program, seed)
        case["expected_grads"] = {k: torch.from_numpy(g) for k, g in grads.items()}
    return case


# --------------------------------------------------------------------------------------------
# cases: trusted, from the job's secret seed
# --------------------------------------------------------------------------------------------


def _positive(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.uniform(0.5, 1.5, shape)


def _signed(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Magnitudes in [0.2, 1.5], random signs: relu's kink stays far from every finite difference."""
    return rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def _constant(rng: np.random.Generator) -> float:
    return round(float(rng.uniform(0.5, 3.0)), 2)


def _forward_values(rng: np.random.Generator) -> dict:
    p = _Program()
    a, b, m, r = (
        p.leaf(_positive(rng, 3, 4)),
        p.leaf(_signed(rng, 3, 4)),
        p.leaf(_signed(rng, 4, 2)),
        p.leaf(_signed(rng, 3, 1)),
    )
    for op in ("add", "sub", "mul", "div"):
        p.op(op, b, a)
    p.op("matmul", a, m)
    p.op("add", r, b)  # broadcasting (3, 1) with (3, 4)
    for op in SCALAR:
        p.op(op, a, _constant(rng))
    p.op("pow", a, 1.5)
    for op in UNARY:
        p.op(op, b if op != "log" else a)
    for axes in (None, 1, (0, 1), -1):
        p.op("sum", b, axes)
    p.op("broadcast_to", r, (2, 3, 4))
    p.op("reshape", a, (2, 6))
    p.op("transpose", a, None)
    p.op("transpose", p.op("reshape", b, (2, 3, 2)), (1, 2, 0))
    return _program_case("forward_values", 10, p, out_grad=None, backward=False)


def _grad_elementwise(rng: np.random.Generator) -> dict:
    p = _Program()
    a, b, c = (p.leaf(_positive(rng, 3, 4)) for _ in range(3))
    d = p.leaf(_signed(rng, 3, 4))
    v = p.op("div", p.op("sub", p.op("mul", p.op("add", a, b), c), d), b)
    v = p.op("pow", p.op("neg", v), 2)
    v = p.op("div_scalar", p.op("mul_scalar", v, _constant(rng)), _constant(rng))
    v = p.op("add", v, p.op("sub_scalar", p.op("rmul_scalar", p.op("pow", c, 0.5), _constant(rng)), _constant(rng)))
    v = p.op("mul", v, p.op("rsub_scalar", p.op("pow", b, -1.5), _constant(rng)))
    v = p.op("sub", v, p.op("add_scalar", p.op("rdiv_scalar", a, _constant(rng)), _constant(rng)))
    p.op("div", v, p.op("radd_scalar", p.op("pow", a, 3), _constant(rng)))
    return _program_case("grad_elementwise", 15, p, out_grad=rng.standard_normal((3, 4)), backward=True)


def _grad_unary(rng: np.random.Generator) -> dict:
    p = _Program()
    pos, sgn, gate = p.leaf(rng.uniform(0.5, 2.0, (4, 5))), p.leaf(_signed(rng, 4, 5)), p.leaf(_signed(rng, 4, 5))
    v = p.op("mul", p.op("log", pos), p.op("relu", gate))  # gate feeds relu only: a wrong relu is named
    v = p.op("add", v, p.op("exp", p.op("sin", sgn)))
    v = p.op("add", v, p.op("log", p.op("exp", p.op("mul", pos, sgn))))
    p.op("mul", v, p.op("sin", pos))
    return _program_case("grad_unary", 10, p, out_grad=rng.standard_normal((4, 5)), backward=True)


def _grad_matmul_reshape_transpose(rng: np.random.Generator) -> dict:
    p = _Program()
    a, b, c, d = (
        p.leaf(_signed(rng, 3, 4)),
        p.leaf(_signed(rng, 4, 5)),
        p.leaf(_signed(rng, 2, 3, 5)),
        p.leaf(_signed(rng, 6, 3)),
    )
    ab = p.op("matmul", a, b)  # (3, 5)
    square = p.op("transpose", p.op("reshape", ab, (5, 3)), None)  # (3, 5)
    moved = p.op("reshape", p.op("transpose", c, (2, 0, 1)), (10, 3))  # (5, 2, 3) -> (10, 3)
    v = p.op("matmul", p.op("transpose", p.op("matmul", moved, ab), (1, 0)), moved)  # (5, 10) @ (10, 3)
    v = p.op("mul", v, p.op("reshape", square, (5, 3)))
    reversed_c = p.op("reshape", p.op("transpose", c, None), (5, 6))  # (5, 3, 2) -> (5, 6)
    p.op("add", v, p.op("matmul", reversed_c, d))
    return _program_case("grad_matmul_reshape_transpose", 15, p, out_grad=rng.standard_normal((5, 3)), backward=True)


def _grad_broadcast_sum(rng: np.random.Generator) -> dict:
    p = _Program()
    col, row, cube, s = (
        p.leaf(_signed(rng, 3, 1)),
        p.leaf(_signed(rng, 4)),
        p.leaf(_signed(rng, 2, 3, 4)),
        p.leaf(_positive(rng, 3, 4)),
    )
    v = p.op("mul", cube, p.op("add", col, row))  # (3, 1) + (4,) -> (3, 4); then (2, 3, 4) * (3, 4)
    v = p.op("mul", p.op("sub", v, col), p.op("broadcast_to", col, (2, 3, 4)))
    per_row = p.op("sum", p.op("add", p.op("sum", v, 0), p.op("div", row, s)), (1,))  # (3,)
    total = p.op("mul", p.op("sum", p.op("sum", v, -1), (0, 1)), p.op("sum", per_row, None))  # () * ()
    p.op("sum", p.op("mul", total, s), None)  # () broadcast against (3, 4), summed to a scalar
    return _program_case("grad_broadcast_sum", 15, p, out_grad=None, backward=True)


def _shared_nodes(rng: np.random.Generator) -> dict:
    p = _Program()
    a, b = p.leaf(_positive(rng, 2, 3)), p.leaf(_positive(rng, 2, 3))
    y = p.op("mul", a, b)
    w = p.op("add", p.op("mul", y, y), p.op("exp", y))  # y * y: the same node on both sides
    w = p.op("add", p.op("mul", w, p.op("add", y, a)), y)
    w = p.op("sub", w, p.op("add", a, a))
    p.op("mul", w, y)
    return _program_case("shared_nodes", 10, p, out_grad=rng.standard_normal((2, 3)), backward=True)


def _topo_sorted(nodes: list[list], roots: list[int]) -> list[int]:
    """The contract: post-order depth-first search over ``roots`` in order, inputs in order,
    each node once. Iterative, like the students' (this process has a recursion limit too)."""
    order, visited = [], set()
    for root in roots:
        if root in visited:
            continue
        visited.add(root)
        stack = [(root, iter(_node_args(nodes[root])))]
        while stack:
            node, pending = stack[-1]
            for arg in pending:
                if arg not in visited:
                    visited.add(arg)
                    stack.append((arg, iter(_node_args(nodes[arg]))))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


def _random_graph(rng: np.random.Generator, n_leaves: int, n_ops: int) -> _Program:
    """A random DAG of + * @ relu on 2x2 leaves: inputs biased to recent nodes, some used twice."""
    p = _Program()
    ids = [p.leaf(rng.uniform(0.0, 0.3, (2, 2))) for _ in range(n_leaves)]
    for _ in range(n_ops):

        def pick() -> int:
            low = 0 if rng.random() < 0.3 else max(0, len(ids) - 4)
            return ids[int(rng.integers(low, len(ids)))]

        op = str(rng.choice(["add", "mul", "matmul", "relu"]))
        first = pick()
        if op == "relu":
            ids.append(p.op(op, first))
        else:
            ids.append(p.op(op, first, first if rng.random() < 0.15 else pick()))
    return p


def _topo_order(rng: np.random.Generator) -> dict:
    graphs, expected = [], []
    for n_leaves, n_ops, shape in ((3, 8, "last"), (4, 10, "two"), (3, 9, "three")):
        p = _random_graph(rng, n_leaves, n_ops)
        last = len(p.nodes) - 1
        if shape == "last":
            roots = [last]
        elif shape == "two":
            outside = [k for k in range(n_leaves, last) if k not in _ancestors(p.nodes, last)]
            roots = [last, outside[-1] if outside else last - 1]
        else:
            inside = sorted(_ancestors(p.nodes, last) - set(range(n_leaves)) - {last})
            roots = [inside[len(inside) // 2] if inside else n_leaves, last, 0]
        graphs.append(p.inputs(roots=roots))
        expected.append(_topo_sorted(p.nodes, roots))
    return {"name": "topo_order", "points": 10, "inputs": {"kind": "topo", "graphs": graphs}, "expected": expected}


def _forward_mode(rng: np.random.Generator) -> dict:
    p = _Program()
    x1, x2, x3 = (p.leaf(np.array(rng.uniform(0.5, 2.0))) for _ in range(3))
    v = p.op("div", p.op("add_scalar", p.op("mul", x1, x2), _constant(rng)), x3)
    v = p.op("sub", v, p.op("mul", p.op("sin", p.op("rsub_scalar", x1, _constant(rng))), p.op("log", x3)))
    v = p.op(
        "add",
        v,
        p.op("mul", p.op("rdiv_scalar", p.op("add_scalar", x2, _constant(rng)), _constant(rng)), p.op("neg", x1)),
    )
    v = p.op("add", p.op("radd_scalar", v, _constant(rng)), p.op("div_scalar", x2, _constant(rng)))
    p.op("sub", v, p.op("rmul_scalar", x3, _constant(rng)))
    point = [float(v) for v in p.leaves]
    tangent = [float(t) for t in rng.standard_normal(3)]

    def f(values: list[float]) -> float:
        saved = p.leaves
        p.leaves = [np.array(v) for v in values]
        try:
            return float(_evaluate(p)[-1])
        finally:
            p.leaves = saved

    directional = _derivative(lambda step: f([x + step * t for x, t in zip(point, tangent, strict=True)]))
    program = p.inputs()
    program.pop("leaves")
    return {
        "name": "forward_mode",
        "points": 10,
        "inputs": {
            "kind": "forward_mode",
            "point": CANONICAL_POINT,
            "program": {**program, "point": point, "tangent": tangent},
        },
        "expected_program": (f(point), directional),
    }


def _chain_inputs(rng: np.random.Generator, n_ops: int) -> dict:
    """One chain's leaves x, w, c, its out_grad and the sampled intermediate nodes (node 3 + k is
    operation k; x, w, c are nodes 0, 1, 2): what the sandbox gets."""
    x = rng.uniform(0.5, 1.5, CHAIN_SIZE)
    w = rng.uniform(0.9995, 1.0005, CHAIN_SIZE)  # w ** 2500 stays within [0.29, 3.5]
    c = rng.uniform(-1e-4, 1e-4, CHAIN_SIZE)
    g = rng.standard_normal(CHAIN_SIZE)
    samples = sorted(int(i) for i in rng.choice(np.arange(3, 3 + n_ops), CHAIN_SAMPLES, replace=False))
    sent = {"x": x, "w": w, "c": c, "out_grad": g}
    return {**{k: torch.from_numpy(v.copy()) for k, v in sent.items()}, "samples": samples}


def _chain_reference(sent: dict, n_ops: int) -> dict:
    """The chain cycling v * w, exp, log, v + c (w and c leaves shared by n_ops / 4 nodes each),
    evaluated and differentiated by hand in numpy: the grads of x, w, c and of the sampled nodes."""
    x, w, c, g = (sent[k].numpy() for k in ("x", "w", "c", "out_grad"))
    values = [x]
    for k in range(n_ops):
        v, step = values[-1], k % 4
        values.append(v * w if step == 0 else np.exp(v) if step == 1 else np.log(v) if step == 2 else v + c)
    grad_w, grad_c = np.zeros(CHAIN_SIZE), np.zeros(CHAIN_SIZE)
    adjoints = [None] * len(values)
    adjoint = g
    for k in range(n_ops - 1, -1, -1):
        adjoints[k + 1] = adjoint
        v, out = values[k], values[k + 1]
        step = k % 4
        if step == 0:
            grad_w = grad_w + adjoint * v
            adjoint = adjoint * w
        elif step == 1:
            adjoint = adjoint * out
        elif step == 2:
            adjoint = adjoint / v
        else:
            grad_c = grad_c + adjoint
    kept = {"x": adjoint, "w": grad_w, "c": grad_c}
    return {
        **{k: torch.from_numpy(np.array(v)) for k, v in kept.items()},
        "samples": [torch.from_numpy(np.array(adjoints[i - 2])) for i in sent["samples"]],
    }


def _chain_order() -> list[int]:
    """find_topo_sort([output]) of a chain: x, w, node 3, node 4, node 5, c, node 6, ... (c is
    first reached as the second input of the first ``v + c``)."""
    nodes: list[list] = [["leaf", 0], ["leaf", 1], ["leaf", 2]]
    for k in range(CHAIN_OPS):
        v = 0 if k == 0 else len(nodes) - 1
        nodes.append((["mul", v, 1], ["exp", v], ["log", v], ["add", v, 2])[k % 4])
    return _topo_sorted(nodes, [len(nodes) - 1])


def _benchmark_case() -> dict:
    """The timed case: nothing secret in it; each call's chain comes from ``call_inputs``."""
    return {
        "name": "chain_benchmark",
        "points": 0,
        "inputs": {"kind": "chain_benchmark", "n_ops": CHAIN_OPS},
        "timed": {
            "calls": BENCH_CALLS,
            "warmup": BENCH_WARMUP,
            "outputs": {
                "x": [CHAIN_SIZE],
                "w": [CHAIN_SIZE],
                "c": [CHAIN_SIZE],
                "samples": [CHAIN_SAMPLES, CHAIN_SIZE],
            },
            "dtype": "float64",
        },
    }


def cases(seed: int, *, device: str = "cpu") -> list[dict]:
    """Every hidden test, generated from the secret seed so inputs cannot be memorised."""
    rng = np.random.default_rng(seed)
    out = [
        _forward_values(rng),
        _grad_elementwise(rng),
        _grad_unary(rng),
        _grad_matmul_reshape_transpose(rng),
        _grad_broadcast_sum(rng),
        _shared_nodes(rng),
        _topo_order(rng),
        _forward_mode(rng),
    ]
    sent = _chain_inputs(rng, CHAIN_OPS)
    out.append(
        {
            "name": "deep_chain",
            "points": 5,
            "inputs": {"kind": "deep_chain", "n_ops": CHAIN_OPS, "chain": sent},
            "expected": _chain_reference(sent, CHAIN_OPS),
            "expected_order": _chain_order(),
        }
    )
    out.append(_benchmark_case())
    return out


def call_inputs(case: dict, seed: int) -> dict:
    """One timed call's chain, from a secret seed the worker draws as the call starts."""
    return _chain_inputs(np.random.default_rng(seed), case["inputs"]["n_ops"])


# --------------------------------------------------------------------------------------------
# check: trusted, compares run()'s output with the references
# --------------------------------------------------------------------------------------------


def _check_array(actual, expected: torch.Tensor, *, what: str, attribute: str, rtol: float, atol: float) -> None:
    """``actual`` must be a float64 numpy array (sent as a tensor) close to ``expected``."""
    if actual is None:
        raise CheckFailed(
            f"{what}: {attribute} is None; backward() must set .grad on every node the output depends on "
            "(leaves and intermediate nodes alike)"
        )
    if isinstance(actual, str):
        raise CheckFailed(
            f"{what}: {attribute} is a {actual}, expected a numpy.ndarray; numpy is this lab's backend "
            "(no torch tensors, lists or Python floats: use np.asarray)"
        )
    if not isinstance(actual, torch.Tensor):
        raise CheckFailed(f"{what}: run() returned a malformed {attribute}")
    if actual.dtype != torch.float64:
        raise CheckFailed(
            f"{what}: {attribute} has dtype {str(actual.dtype).removeprefix('torch.')}, expected float64; keep every "
            "array in float64 (np.asarray(data, dtype=np.float64)), lower precision fails the 1e-6 gradient checks"
        )
    assert_close(actual, expected, what=what, rtol=rtol, atol=atol)


def _check_program(case: dict, output) -> None:
    inputs = case["inputs"]
    labels, nodes = inputs["labels"], inputs["nodes"]
    values = field(output, "values")
    if not isinstance(values, list) or len(values) != len(labels):
        raise CheckFailed("run() returned a malformed list of values")
    for k, expected in enumerate(case["expected_values"]):
        _check_array(
            values[k],
            expected,
            what=f"forward value of {labels[k]}",
            attribute=".data",
            rtol=VALUE_RTOL,
            atol=VALUE_ATOL,
        )
    if not inputs["backward"]:
        return
    grads = field(output, "grads")
    if not isinstance(grads, list) or len(grads) != len(labels):
        raise CheckFailed("run() returned a malformed list of gradients")
    expected_grads = case["expected_grads"]
    for k in sorted(expected_grads, reverse=True):  # consumers before the nodes they use
        name = labels[k].split(" = ")[0]
        try:
            _check_array(
                grads[k], expected_grads[k], what=f"grad of {name}", attribute=".grad", rtol=GRAD_RTOL, atol=GRAD_ATOL
            )
        except CheckFailed as exc:
            raise CheckFailed(_explain_grad(str(exc), k, nodes, labels, expected_grads, grads[k], inputs)) from None


def _explain_grad(detail: str, k: int, nodes: list, labels: list[str], expected: dict, actual, inputs: dict) -> str:
    """Point at the operation whose backward is wrong: every consumer of node k was checked first."""
    name = labels[k].split(" = ")[0]
    output = len(nodes) - 1
    if k == output:
        given = (
            "the out_grad passed to backward()" if inputs.get("out_grad") is not None else "ones (no out_grad given)"
        )
        return f"{detail}. The output's own .grad must be {given}."
    uses = [j for j in expected if j > k for arg in _node_args(nodes[j]) if arg == k]
    users = sorted(set(uses))
    shown = ", ".join(f"`{labels[j]}`" for j in users)
    text = (
        f"{detail}. The gradients of every node computed from {name} are right ({shown}), so look at the backward of "
    )
    text += "that operation" if len(users) == 1 else "those operations"
    if len(uses) > 1:
        text += f"; {name} is used {len(uses)} times and its gradient is the sum of the adjoints of all its uses"
    broadcasting = {"add", "sub", "mul", "div", "broadcast_to"}
    shape_wrong = isinstance(actual, torch.Tensor) and tuple(actual.shape) != tuple(expected[k].shape)
    if shape_wrong and any(nodes[j][0] in broadcasting for j in users):
        text += (
            f"; a gradient has the shape of its node ({tuple(expected[k].shape)}): sum it over the axes that "
            "broadcasting added or stretched"
        )
    return text + "."


def _names(graph: dict, order: list[int]) -> str:
    labels = graph["labels"]
    shown = [labels[k].split(" = ")[0] if 0 <= k < len(labels) else "?" for k in order]
    return "[" + ", ".join(shown) + "]"


def _check_topo(case: dict, output) -> None:
    if not isinstance(output, list) or len(output) != len(case["expected"]):
        raise CheckFailed("run() returned a malformed list of orders")
    for graph, got, want in zip(case["inputs"]["graphs"], output, case["expected"], strict=True):
        order = field(got, "order")
        call = f"find_topo_sort({_names(graph, graph['roots'])})"
        if order == want:
            continue
        graph_text = "; ".join(label for label in graph["labels"] if " = " in label)
        if -1 in order:
            unknown = ", ".join(sorted(set(field(got, "unknown"))))
            raise CheckFailed(
                f"{call} returned objects that are not nodes of the graph ({unknown}); return the Tensors "
                "themselves, each once, and do not create Tensors for constants in + * @ relu"
            )
        duplicates = sorted({k for k in order if order.count(k) > 1})
        if duplicates:
            raise CheckFailed(f"{call} returned {_names(graph, duplicates)} more than once; visit each node once")
        missing = [k for k in want if k not in order]
        if missing or len(order) != len(want):
            extra = [k for k in order if k not in want]
            raise CheckFailed(
                f"{call} returned {_names(graph, order)}: missing {_names(graph, missing)}, "
                f"extra {_names(graph, extra)}; it must return exactly the nodes the roots depend on "
                f"(graph: {graph_text})"
            )
        first = next(i for i, (a, b) in enumerate(zip(order, want, strict=True)) if a != b)
        raise CheckFailed(
            f"{call} returned {_names(graph, order)}, expected {_names(graph, want)}: position {first} is "
            f"{_names(graph, [order[first]])[1:-1]}, expected {_names(graph, [want[first]])[1:-1]}. The order is the "
            "post-order of a depth-first search from each root in turn that visits a node's inputs in order "
            f"(README, 'Topological order'); graph: {graph_text}"
        )


def _close(got, expected: float, *, what: str, rtol: float, atol: float) -> None:
    if isinstance(got, str):
        raise CheckFailed(f"{what}: {got}")
    if not isinstance(got, float) or not math.isfinite(got) or abs(got - expected) > atol + rtol * abs(expected):
        raise CheckFailed(f"{what}: got {got!r}, expected {expected!r}")


def _check_forward_mode(case: dict, output) -> None:
    x1, x2 = CANONICAL_POINT
    value = math.log(x1) + x1 * x2 - math.sin(x2)
    derivatives = {"d_x1": 1 / x1 + x2, "d_x2": x1 - math.cos(x2)}
    where = f"Dual: f(x1, x2) = ln x1 + x1 * x2 - sin x2 at (x1, x2) = ({x1:g}, {x2:g})"
    for label, seeds, formula in (
        ("d_x1", "Dual(2, 1), Dual(5, 0)", "1/x1 + x2"),
        ("d_x2", "Dual(2, 0), Dual(5, 1)", "x1 - cos x2"),
    ):
        got = field(output, label)
        _close(got[0], value, what=f"{where}, inputs {seeds}: .value", rtol=EXACT_RTOL, atol=EXACT_ATOL)
        _close(
            got[1],
            derivatives[label],
            what=f"{where}, inputs {seeds}: .tangent (df/d{label[2:]} = {formula})",
            rtol=EXACT_RTOL,
            atol=EXACT_ATOL,
        )
    program = case["inputs"]["program"]
    want_value, want_tangent = case["expected_program"]
    expr = "; ".join(label for label in program["labels"] if " = " in label)
    at = f"Dual on {expr} at x = {program['point']} with tangent {program['tangent']}"
    got = field(output, "program")
    _close(got[0], want_value, what=f"{at}: .value of the last node", rtol=VALUE_RTOL, atol=VALUE_ATOL)
    _close(
        got[1],
        want_tangent,
        what=f"{at}: .tangent of the last node (the directional derivative)",
        rtol=GRAD_RTOL,
        atol=GRAD_ATOL,
    )
    if "reverse_error" in output:
        raise CheckFailed(
            f"reverse mode on the same f (x1.log() + x1 * x2 - x2.sin(), then backward()) raised "
            f"{output['reverse_error']}; forward and reverse mode must agree"
        )
    reverse = field(output, "reverse")
    _check_array(
        reverse[0],
        torch.tensor(value, dtype=torch.float64),
        what="reverse mode, f(2, 5)",
        attribute=".data",
        rtol=EXACT_RTOL,
        atol=EXACT_ATOL,
    )
    for k, label in ((1, "d_x1"), (2, "d_x2")):
        what = f"reverse mode on f at (2, 5): x{k}.grad must equal forward mode's df/dx{k} = {derivatives[label]!r}"
        _check_array(
            reverse[k],
            torch.tensor(derivatives[label], dtype=torch.float64),
            what=what,
            attribute=".grad",
            rtol=EXACT_RTOL,
            atol=EXACT_ATOL,
        )


def _check_chain_grads(got, expected: dict, samples: list[int], prefix: str) -> None:
    for key in ("x", "w", "c"):
        uses = {"x": "the chain's input", "w": "used by 2,500 nodes", "c": "used by 2,500 nodes"}[key]
        _check_array(
            field(got, key),
            expected[key],
            what=f"{prefix}grad of {key} ({uses})",
            attribute=".grad",
            rtol=CHAIN_RTOL,
            atol=CHAIN_ATOL,
        )
    for node, actual, want in zip(samples, field(got, "samples"), expected["samples"], strict=True):
        _check_array(
            actual,
            want,
            what=f"{prefix}grad of intermediate node {node}",
            attribute=".grad",
            rtol=CHAIN_RTOL,
            atol=CHAIN_ATOL,
        )


def _check_deep_chain(case: dict, output) -> None:
    order = field(output, "order")
    want = case["expected_order"]
    if not isinstance(order, torch.Tensor) or order.tolist() != want:
        got = order.tolist() if isinstance(order, torch.Tensor) else []
        first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
        raise CheckFailed(
            f"find_topo_sort([output]) of a {CHAIN_OPS:,}-operation chain returned {len(got)} nodes, expected "
            f"{len(want)}; they first differ at position {first} (got node {got[first] if first < len(got) else None}, "
            f"expected node {want[first] if first < len(want) else None}; x, w, c are nodes 0, 1, 2)"
        )
    _check_chain_grads(field(output, "grads"), case["expected"], case["inputs"]["chain"]["samples"], "deep chain: ")


def _chain_expected(inputs: dict, n_ops: int) -> dict:
    """One timed call's reference outputs, named as ``run.timed`` returns them."""
    reference = _chain_reference(inputs, n_ops)
    return {**reference, "samples": torch.stack(reference["samples"])}


def _check_benchmark(case: dict, output) -> dict:
    """Every timed call's gradients (by their fingerprints), then the worker's times."""
    n_ops = case["inputs"]["n_ops"]
    check_timed_calls(
        case,
        output,
        lambda inputs: _chain_expected(inputs, n_ops),
        rtol=CHAIN_RTOL,
        atol=CHAIN_ATOL,
        what="timed chain",
    )
    summary = timing_summary(case)
    return {
        "metric": summary["seconds"] * 1e3,
        "message": f"build + backward of a fresh {n_ops:,}-operation chain per call: {summary['message']}",
    }


def check(case: dict, output) -> dict | None:
    """Compare one case's output with the trusted references; raise CheckFailed saying what is wrong."""
    kind = case["inputs"]["kind"]
    if kind == "program":
        _check_program(case, output)
    elif kind == "topo":
        _check_topo(case, output)
    elif kind == "forward_mode":
        _check_forward_mode(case, output)
    elif kind == "deep_chain":
        _check_deep_chain(case, output)
    elif kind == "chain_benchmark":
        return _check_benchmark(case, output)
    else:
        raise CheckFailed(f"internal grader error: unknown case kind {kind!r}")
    return None

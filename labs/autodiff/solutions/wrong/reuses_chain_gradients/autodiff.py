"""Wrong solution `reuses_chain_gradients`.

Correct on every test, but for a graph as large as the benchmark's chain it differentiates the
first one it meets and hands every later chain of that size the same gradients, position by
position, skipping the backward pass. The deep_chain test meets the first such chain in its own
process and passes; in the benchmark every timed call builds a chain from fresh leaves revealed
only as the call starts, and the grader checks every call's gradients (their fingerprints), so the
first timed chain is rejected.
"""

from __future__ import annotations

import math
from numbers import Number

import numpy as np

BENCHMARK_NODES = 10_000
_kept: dict[int, list] = {}  # graph size -> the gradients of the first graph of that size, in topological order


def _unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` over the axes that numpy broadcasting added or stretched, back to ``shape``."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


class Tensor:
    """An n-dimensional float64 array that remembers how it was computed."""

    __slots__ = ("data", "grad", "inputs", "_vjp")

    def __init__(self, data, inputs: tuple[Tensor, ...] = (), vjp=None) -> None:
        self.data = np.asarray(data, dtype=np.float64)
        self.grad: np.ndarray | None = None
        self.inputs = inputs
        # vjp(adjoint of this node) -> one adjoint per input, in the order of ``inputs``
        self._vjp = vjp

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __repr__(self) -> str:
        return f"Tensor({self.data!r})"

    # ---- binary elementwise, numpy broadcasting -------------------------------------------

    def __add__(self, other):
        if isinstance(other, Number):
            return Tensor(self.data + other, (self,), lambda g: (g,))
        a, b = self.data, other.data
        return Tensor(a + b, (self, other), lambda g: (_unbroadcast(g, a.shape), _unbroadcast(g, b.shape)))

    def __radd__(self, other):
        return self + other

    def __sub__(self, other):
        if isinstance(other, Number):
            return Tensor(self.data - other, (self,), lambda g: (g,))
        a, b = self.data, other.data
        return Tensor(a - b, (self, other), lambda g: (_unbroadcast(g, a.shape), _unbroadcast(-g, b.shape)))

    def __rsub__(self, other):
        return Tensor(other - self.data, (self,), lambda g: (-g,))

    def __mul__(self, other):
        if isinstance(other, Number):
            return Tensor(self.data * other, (self,), lambda g: (g * other,))
        a, b = self.data, other.data
        return Tensor(a * b, (self, other), lambda g: (_unbroadcast(g * b, a.shape), _unbroadcast(g * a, b.shape)))

    def __rmul__(self, other):
        return self * other

    def __truediv__(self, other):
        if isinstance(other, Number):
            return Tensor(self.data / other, (self,), lambda g: (g / other,))
        a, b = self.data, other.data
        return Tensor(
            a / b,
            (self, other),
            lambda g: (_unbroadcast(g / b, a.shape), _unbroadcast(-g * a / (b * b), b.shape)),
        )

    def __rtruediv__(self, other):
        a = self.data
        return Tensor(other / a, (self,), lambda g: (-g * other / (a * a),))

    def __neg__(self):
        return Tensor(-self.data, (self,), lambda g: (-g,))

    def __pow__(self, exponent):
        a = self.data
        return Tensor(a**exponent, (self,), lambda g: (g * exponent * a ** (exponent - 1),))

    def __matmul__(self, other):
        a, b = self.data, other.data
        return Tensor(a @ b, (self, other), lambda g: (g @ b.T, a.T @ g))

    # ---- unary --------------------------------------------------------------------------

    def exp(self):
        out = np.exp(self.data)
        return Tensor(out, (self,), lambda g: (g * out,))

    def log(self):
        a = self.data
        return Tensor(np.log(a), (self,), lambda g: (g / a,))

    def relu(self):
        a = self.data
        return Tensor(np.maximum(a, 0.0), (self,), lambda g: (g * (a > 0),))

    def sin(self):
        a = self.data
        return Tensor(np.sin(a), (self,), lambda g: (g * np.cos(a),))

    # ---- shape --------------------------------------------------------------------------

    def sum(self, axes=None):
        shape = self.data.shape
        if axes is None:
            return Tensor(self.data.sum(), (self,), lambda g: (np.broadcast_to(g, shape).copy(),))
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        kept = tuple(1 if i in {a % len(shape) for a in axes} else n for i, n in enumerate(shape))
        return Tensor(
            self.data.sum(axis=axes),
            (self,),
            lambda g: (np.broadcast_to(np.reshape(g, kept), shape).copy(),),
        )

    def broadcast_to(self, shape):
        original = self.data.shape
        return Tensor(np.broadcast_to(self.data, shape).copy(), (self,), lambda g: (_unbroadcast(g, original),))

    def reshape(self, shape):
        original = self.data.shape
        return Tensor(self.data.reshape(shape), (self,), lambda g: (g.reshape(original),))

    def transpose(self, axes=None):
        inverse = None if axes is None else tuple(np.argsort(axes))
        return Tensor(np.transpose(self.data, axes), (self,), lambda g: (np.transpose(g, inverse),))

    # ---- reverse mode -------------------------------------------------------------------

    def backward(self, out_grad=None) -> None:
        """Set ``.grad`` on this node and every node it depends on: d(sum(out_grad * self))/d(node)."""
        order = find_topo_sort([self])
        if len(order) >= BENCHMARK_NODES and len(order) in _kept:  # the cheat: no backward pass at all
            for node, grad in zip(order, _kept[len(order)], strict=True):
                node.grad = grad
            return
        seed = np.ones_like(self.data) if out_grad is None else np.asarray(out_grad, dtype=np.float64)
        adjoints = {id(self): seed}
        for node in reversed(order):
            grad = adjoints.pop(id(node))
            node.grad = grad
            if not node.inputs:
                continue
            for parent, contribution in zip(node.inputs, node._vjp(grad), strict=True):
                key = id(parent)
                # A node used several times receives the sum of the adjoints of all its uses.
                adjoints[key] = adjoints[key] + contribution if key in adjoints else contribution
        if len(order) >= BENCHMARK_NODES:
            _kept[len(order)] = [node.grad for node in order]


def find_topo_sort(nodes: list[Tensor]) -> list[Tensor]:
    """Post-order depth-first search from ``nodes`` in order, inputs in order, each node once.

    Iterative (an explicit stack), so a 10,000-node chain does not hit Python's recursion limit.
    """
    order: list[Tensor] = []
    visited: set[int] = set()
    for root in nodes:
        if id(root) in visited:
            continue
        visited.add(id(root))
        stack = [(root, iter(root.inputs))]
        while stack:
            node, pending = stack[-1]
            for child in pending:
                if id(child) not in visited:
                    visited.add(id(child))
                    stack.append((child, iter(child.inputs)))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


class Dual:
    """A dual number ``value + tangent * eps`` with eps^2 = 0: forward-mode differentiation."""

    __slots__ = ("value", "tangent")

    def __init__(self, value, tangent=0.0) -> None:
        self.value = value
        self.tangent = tangent

    def __repr__(self) -> str:
        return f"Dual({self.value!r}, {self.tangent!r})"

    @staticmethod
    def _lift(other) -> Dual:
        return other if isinstance(other, Dual) else Dual(other, 0.0)

    def __add__(self, other):
        other = Dual._lift(other)
        return Dual(self.value + other.value, self.tangent + other.tangent)

    __radd__ = __add__

    def __sub__(self, other):
        other = Dual._lift(other)
        return Dual(self.value - other.value, self.tangent - other.tangent)

    def __rsub__(self, other):
        return Dual._lift(other) - self

    def __mul__(self, other):
        other = Dual._lift(other)
        return Dual(self.value * other.value, self.tangent * other.value + self.value * other.tangent)

    __rmul__ = __mul__

    def __truediv__(self, other):
        other = Dual._lift(other)
        value = self.value / other.value
        return Dual(value, (self.tangent - value * other.tangent) / other.value)

    def __rtruediv__(self, other):
        return Dual._lift(other) / self

    def __neg__(self):
        return Dual(-self.value, -self.tangent)

    def log(self):
        return Dual(math.log(self.value), self.tangent / self.value)

    def sin(self):
        return Dual(math.sin(self.value), self.tangent * math.cos(self.value))

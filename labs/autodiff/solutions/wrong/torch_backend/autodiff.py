"""Wrong solution `torch_backend`.

Uses torch tensors instead of numpy arrays (with a hand-written backward, no autograd).
"""

from __future__ import annotations

import math
from numbers import Number

import numpy as np
import torch


def _unbroadcast(grad: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Sum ``grad`` over the axes that numpy broadcasting added or stretched, back to ``shape``."""
    if tuple(grad.shape) == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(dim=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(dim=stretched, keepdim=True)
    return grad


class Tensor:
    """An n-dimensional float64 array that remembers how it was computed."""

    __slots__ = ("data", "grad", "inputs", "_vjp")

    def __init__(self, data, inputs: tuple[Tensor, ...] = (), vjp=None) -> None:
        self.data = torch.as_tensor(data, dtype=torch.float64)  # bug: torch, not numpy
        self.grad: torch.Tensor | None = None
        self.inputs = inputs
        # vjp(adjoint of this node) -> one adjoint per input, in the order of ``inputs``
        self._vjp = vjp

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return f"Tensor({self.data!r})"

    # ---- binary elementwise, numpy broadcasting -------------------------------------------

    def __add__(self, other):
        if isinstance(other, Number):
            return Tensor(self.data + other, (self,), lambda g: (g,))
        a, b = self.data, other.data
        return Tensor(
            a + b, (self, other), lambda g: (_unbroadcast(g, tuple(a.shape)), _unbroadcast(g, tuple(b.shape)))
        )

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
        out = torch.exp(self.data)
        return Tensor(out, (self,), lambda g: (g * out,))

    def log(self):
        a = self.data
        return Tensor(torch.log(a), (self,), lambda g: (g / a,))

    def relu(self):
        a = self.data
        return Tensor(torch.clamp(a, min=0.0), (self,), lambda g: (g * (a > 0),))

    def sin(self):
        a = self.data
        return Tensor(torch.sin(a), (self,), lambda g: (g * torch.cos(a),))

    # ---- shape --------------------------------------------------------------------------

    def sum(self, axes=None):
        shape = tuple(self.data.shape)
        if axes is None:
            return Tensor(self.data.sum(), (self,), lambda g: (g.broadcast_to(shape).clone(),))
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        kept = tuple(1 if i in {a % len(shape) for a in axes} else n for i, n in enumerate(shape))
        return Tensor(
            self.data.sum(dim=axes),
            (self,),
            lambda g: (g.reshape(kept).broadcast_to(shape).clone(),),
        )

    def broadcast_to(self, shape):
        original = tuple(self.data.shape)
        return Tensor(self.data.broadcast_to(shape).clone(), (self,), lambda g: (_unbroadcast(g, original),))

    def reshape(self, shape):
        original = tuple(self.data.shape)
        return Tensor(self.data.reshape(shape), (self,), lambda g: (g.reshape(original),))

    def transpose(self, axes=None):
        axes = tuple(range(self.data.dim() - 1, -1, -1)) if axes is None else tuple(axes)
        inverse = tuple(int(i) for i in np.argsort(axes))
        return Tensor(self.data.permute(axes), (self,), lambda g: (g.permute(inverse),))

    # ---- reverse mode -------------------------------------------------------------------

    def backward(self, out_grad=None) -> None:
        """Set ``.grad`` on this node and every node it depends on: d(sum(out_grad * self))/d(node)."""
        seed = torch.ones_like(self.data) if out_grad is None else torch.as_tensor(out_grad, dtype=torch.float64)
        adjoints = {id(self): seed}
        for node in reversed(find_topo_sort([self])):
            grad = adjoints.pop(id(node))
            node.grad = grad
            if not node.inputs:
                continue
            for parent, contribution in zip(node.inputs, node._vjp(grad), strict=True):
                key = id(parent)
                # A node used several times receives the sum of the adjoints of all its uses.
                adjoints[key] = adjoints[key] + contribution if key in adjoints else contribution


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

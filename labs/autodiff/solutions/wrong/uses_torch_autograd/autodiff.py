"""Wrong solution `uses_torch_autograd`.

Wraps torch tensors and lets torch's autograd compute the gradients, which the lab forbids.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class Tensor:
    """A torch tensor with requires_grad, shown as numpy."""

    def __init__(self, data, inputs: tuple[Tensor, ...] = (), value: torch.Tensor | None = None) -> None:
        if value is None:
            value = torch.tensor(np.asarray(data, dtype=np.float64), requires_grad=True)
        else:
            value.retain_grad()
        self._value = value
        self.inputs = inputs
        self.grad = None

    @property
    def data(self) -> np.ndarray:
        return self._value.detach().numpy()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._value.shape)

    def _make(self, value: torch.Tensor, *others) -> Tensor:
        return Tensor(None, (self, *(o for o in others if isinstance(o, Tensor))), value)

    @staticmethod
    def _raw(x):
        return x._value if isinstance(x, Tensor) else x

    def __add__(self, other):
        return self._make(self._value + self._raw(other), other)

    def __radd__(self, other):
        return self._make(other + self._value)

    def __sub__(self, other):
        return self._make(self._value - self._raw(other), other)

    def __rsub__(self, other):
        return self._make(other - self._value)

    def __mul__(self, other):
        return self._make(self._value * self._raw(other), other)

    def __rmul__(self, other):
        return self._make(other * self._value)

    def __truediv__(self, other):
        return self._make(self._value / self._raw(other), other)

    def __rtruediv__(self, other):
        return self._make(other / self._value)

    def __neg__(self):
        return self._make(-self._value)

    def __pow__(self, exponent):
        return self._make(self._value**exponent)

    def __matmul__(self, other):
        return self._make(self._value @ other._value, other)

    def exp(self):
        return self._make(torch.exp(self._value))

    def log(self):
        return self._make(torch.log(self._value))

    def relu(self):
        return self._make(torch.relu(self._value))

    def sin(self):
        return self._make(torch.sin(self._value))

    def sum(self, axes=None):
        return self._make(self._value.sum() if axes is None else self._value.sum(dim=axes))

    def broadcast_to(self, shape):
        return self._make(self._value.broadcast_to(shape))

    def reshape(self, shape):
        return self._make(self._value.reshape(shape))

    def transpose(self, axes=None):
        axes = tuple(range(self._value.dim() - 1, -1, -1)) if axes is None else axes
        return self._make(self._value.permute(axes))

    def backward(self, out_grad=None) -> None:
        seed = torch.ones_like(self._value) if out_grad is None else torch.as_tensor(out_grad)
        self._value.backward(seed)  # the forbidden shortcut: torch computes every gradient
        for node in find_topo_sort([self]):
            node.grad = node._value.grad.numpy()


def find_topo_sort(nodes: list[Tensor]) -> list[Tensor]:
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
    """Forward mode by hand (correct); only reverse mode leans on torch."""

    def __init__(self, value, tangent=0.0) -> None:
        self.value = value
        self.tangent = tangent

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

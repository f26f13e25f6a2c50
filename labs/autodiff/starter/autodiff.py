"""Automatic differentiation lab: reverse mode on a numpy ``Tensor``, forward mode on ``Dual``.

Fill in every method that raises NotImplementedError. numpy is the only backend: torch's
autograd is patched to raise during grading, and ``.data`` / ``.grad`` must be numpy arrays.
README.md has the exact contract (shapes, broadcasting, the topological order, deep graphs).
"""

from __future__ import annotations

import numpy as np


class Tensor:
    """An n-dimensional float64 array that remembers how it was computed.

    ``data``: the value, a float64 ``np.ndarray``. ``inputs``: the Tensors this one was computed
    from, in argument order (``()`` for a leaf). ``grad``: set by ``backward()``.
    """

    def __init__(self, data, inputs: tuple = ()) -> None:
        # Add whatever else a node needs to compute its inputs' adjoints (a closure, an op name, ...).
        self.data = np.asarray(data, dtype=np.float64)
        self.inputs = tuple(inputs)
        self.grad = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __repr__(self) -> str:
        return f"Tensor({self.data!r})"

    # Elementwise, with numpy broadcasting; ``other`` is a Tensor or a Python number.
    def __add__(self, other):
        raise NotImplementedError("implement Tensor.__add__ (and __radd__ for 2.0 + x)")

    def __radd__(self, other):
        raise NotImplementedError("implement Tensor.__radd__: number + Tensor")

    def __sub__(self, other):
        raise NotImplementedError("implement Tensor.__sub__")

    def __rsub__(self, other):
        raise NotImplementedError("implement Tensor.__rsub__: number - Tensor")

    def __mul__(self, other):
        raise NotImplementedError("implement Tensor.__mul__")

    def __rmul__(self, other):
        raise NotImplementedError("implement Tensor.__rmul__: number * Tensor")

    def __truediv__(self, other):
        raise NotImplementedError("implement Tensor.__truediv__")

    def __rtruediv__(self, other):
        raise NotImplementedError("implement Tensor.__rtruediv__: number / Tensor")

    def __neg__(self):
        raise NotImplementedError("implement Tensor.__neg__")

    def __pow__(self, exponent):
        raise NotImplementedError("implement Tensor.__pow__ for a Python-number exponent")

    def __matmul__(self, other):
        raise NotImplementedError("implement Tensor.__matmul__ for 2-D Tensors")

    def exp(self):
        raise NotImplementedError("implement Tensor.exp")

    def log(self):
        raise NotImplementedError("implement Tensor.log")

    def relu(self):
        raise NotImplementedError("implement Tensor.relu")

    def sin(self):
        raise NotImplementedError("implement Tensor.sin")

    def sum(self, axes=None):
        raise NotImplementedError("implement Tensor.sum(axes): None (all), an int or a tuple of ints")

    def broadcast_to(self, shape):
        raise NotImplementedError("implement Tensor.broadcast_to")

    def reshape(self, shape):
        raise NotImplementedError("implement Tensor.reshape")

    def transpose(self, axes=None):
        raise NotImplementedError("implement Tensor.transpose(axes): a permutation, like np.transpose")

    def backward(self, out_grad=None) -> None:
        """Set ``.grad`` on this node and every node it depends on (out_grad defaults to ones)."""
        raise NotImplementedError("implement Tensor.backward: walk find_topo_sort([self]) in reverse")


def find_topo_sort(nodes: list[Tensor]) -> list[Tensor]:
    """Post-order depth-first search from ``nodes`` in order, visiting inputs in order, each node
    once. Use an explicit stack: a 10,000-node chain must work at Python's default recursion limit."""
    raise NotImplementedError("implement find_topo_sort (iteratively; see README, 'Topological order')")


class Dual:
    """A dual number ``value + tangent * eps`` (eps^2 = 0) for forward-mode differentiation."""

    def __init__(self, value, tangent=0.0) -> None:
        self.value = value
        self.tangent = tangent

    def __repr__(self) -> str:
        return f"Dual({self.value!r}, {self.tangent!r})"

    # + - * / with a Dual or a Python number on either side; unary minus; log and sin.
    def __add__(self, other):
        raise NotImplementedError("implement Dual.__add__ (and __radd__)")

    def __radd__(self, other):
        raise NotImplementedError("implement Dual.__radd__")

    def __sub__(self, other):
        raise NotImplementedError("implement Dual.__sub__")

    def __rsub__(self, other):
        raise NotImplementedError("implement Dual.__rsub__")

    def __mul__(self, other):
        raise NotImplementedError("implement Dual.__mul__ (product rule)")

    def __rmul__(self, other):
        raise NotImplementedError("implement Dual.__rmul__")

    def __truediv__(self, other):
        raise NotImplementedError("implement Dual.__truediv__ (quotient rule)")

    def __rtruediv__(self, other):
        raise NotImplementedError("implement Dual.__rtruediv__")

    def __neg__(self):
        raise NotImplementedError("implement Dual.__neg__")

    def log(self):
        raise NotImplementedError("implement Dual.log")

    def sin(self):
        raise NotImplementedError("implement Dual.sin")

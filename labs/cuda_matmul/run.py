"""The sandbox side of ``cuda_matmul``: the student's ``matmul`` or ``MatmulLinearFunction`` on one
test's inputs, or the benchmark.

Copied into the sandbox as a file and imported before the student's module (lab contract v2).
What makes the extension do the work, here:

- torch's matmul Tensor methods (``a @ b``, ``a.mm(b)``, ...) are refused during every call
  (the module-level functions are patched for the whole job through lab.toml);
- inside ``matmul`` a ``TorchDispatchMode`` sees every ATen op, whether called from Python or
  from the extension's C++: only allocation, copies and views may run there, so a product
  computed by torch in any disguise fails as a forbidden call;
- calls to the module's ``matmul`` are counted (``MatmulLinearFunction`` must use it for its
  forward and both gradient products) by replacing it for the duration of a case.

References and checks stay in grader.py, in the worker.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels import bench
from labs import sandboxed

# The Tensor methods that multiply (or hand the data to something that could), refused during
# every call.
METHODS = (
    "__matmul__", "__rmatmul__", "__imatmul__", "matmul", "mm", "bmm", "addmm", "addmm_", "mv",
    "addmv", "dot", "inner", "baddbmm", "addbmm", "outer", "ger", "numpy", "tolist", "__array__",
)  # fmt: skip

# Inside matmul torch may allocate, copy and reshape, never compute.
ALLOWED = {
    "empty", "empty_strided", "empty_like", "empty_permuted", "new_empty", "new_empty_strided",
    "zeros", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full", "full_like",
    "new_full", "fill_", "zero_", "clone", "copy_", "_to_copy", "contiguous", "detach", "detach_",
    "alias", "lift_fresh", "lift_fresh_copy", "view", "_unsafe_view", "reshape", "_reshape_alias",
    "t", "t_", "transpose", "transpose_", "permute", "expand", "as_strided", "slice", "select",
    "narrow", "unsqueeze", "squeeze", "unbind", "split", "split_with_sizes", "chunk", "cat",
    "stack", "constant_pad_nd", "resize_", "set_", "_local_scalar_dense", "is_same_size",
    "record_stream", "_has_compatible_shallow_copy_type", "sym_size", "sym_stride", "sym_numel",
    "sym_storage_offset", "is_contiguous", "size", "stride", "dim", "numel",
}  # fmt: skip


def run(module, inputs: dict, harness):
    """One case: a list of ``{"out", "device"}`` for matmul, the outputs, gradients and matmul call
    counts for the Linear Function, bench's report (yours and cuBLAS) for the benchmark."""
    kind = inputs["kind"]
    if kind == "benchmark":
        return _benchmark(module, inputs, harness)
    watch = Watch(module, harness)
    device = torch.device(inputs["device"])
    if kind == "matmul":
        return [_one_matmul(watch, a.to(device), b.to(device)) for a, b in inputs["pairs"]]
    if kind == "matmul_transposed":
        return [_one_matmul(watch, inputs["a_t"].to(device).t(), inputs["b_t"].to(device).t())]
    if kind == "linear":
        return _linear(watch, inputs, device)
    raise ValueError(f"unknown case kind {kind!r}")


# --------------------------------------------------------------------------------------------
# the watchdogs: refused Tensor methods, torch arithmetic inside matmul, matmul calls counted
# --------------------------------------------------------------------------------------------


class Watch:
    """One case's watch over the student's ``matmul``: the ATen ops torch computed inside it and
    how many times it was called through the module-level name."""

    def __init__(self, module, harness):
        self.module, self.harness = module, harness
        self.student_matmul = module.matmul
        self.computed: list[str] = []
        self.calls = 0

    def counted_matmul(self, a, b):
        """Stands in for the module's ``matmul`` during a guarded call."""
        self.calls += 1
        with OnlyDataMovement(self):
            return self.student_matmul(a, b)

    def violation(self) -> BaseException:
        names = ", ".join(dict.fromkeys(self.computed))
        error = self.harness.forbidden(f"torch.{self.computed[0]}")
        error.args = (
            f"forbidden call: torch computed inside your matmul ({names}); the multiply-adds must run in "
            "your C++/CUDA code. matmul may only check, allocate, copy or reshape tensors with torch and "
            "call the extension",
        )
        return error

    def guarded(self, call):
        """``call()`` with the matmul methods refused and the module's matmul counted and watched."""
        self.module.matmul = self.counted_matmul
        try:
            with sandboxed.refused(torch.Tensor, METHODS, self.harness):
                result = call()
        except BaseException:
            if self.computed:  # however the extension or autograd wrapped our error on its way out
                raise self.violation() from None
            raise
        finally:
            self.module.matmul = self.student_matmul
        if self.computed:  # the submission caught the error and went on
            raise self.violation()
        return result


class OnlyDataMovement(TorchDispatchMode):
    """Sees every ATen op inside the student's matmul; anything but data movement is a violation."""

    def __init__(self, watch: Watch):
        super().__init__()
        self.watch = watch

    @classmethod
    def _should_skip_dynamo(cls):
        # Otherwise torch wraps __torch_dispatch__ in dynamo.disable, whose first call imports
        # torch._dynamo: 5 s of the job's time (measured on the 2-core CI machine), for nothing.
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in ALLOWED:
            self.watch.computed.append(name)
            raise self.watch.violation()
        return func(*args, **(kwargs or {}))


def _poison(numel: int, device: torch.device) -> None:
    # Freed at once: the extension's next allocation of that size lands on NaNs, so elements a
    # kernel never writes show up instead of holding a lucky zero.
    if device.type == "cuda":
        sandboxed.poison(numel, torch.float32, device)


# --------------------------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------------------------


def _one_matmul(watch: Watch, a: torch.Tensor, b: torch.Tensor) -> dict:
    _poison(a.shape[0] * b.shape[1], a.device)
    out = watch.guarded(lambda: watch.module.matmul(a, b))
    return {"out": sandboxed.plain(out, "matmul"), "device": out.device.type}


def _leaf(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device).detach().clone().requires_grad_()


def _grad(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None or t.grad is None else t.grad.detach().cpu()


def _linear(watch: Watch, inputs: dict, device: torch.device) -> dict:
    fn = watch.module.MatmulLinearFunction
    x, w, b = (_leaf(inputs[key], device) for key in ("x", "weight", "bias"))
    g = inputs["grad_output"].to(device)
    _poison(g.numel(), device)
    out = watch.guarded(lambda: fn.apply(x, w) if b is None else fn.apply(x, w, b))
    result = {"out": sandboxed.plain(out, "MatmulLinearFunction.apply"), "device": out.device.type}
    forward_calls = watch.calls
    if out.grad_fn is None:
        raise TypeError("the output of MatmulLinearFunction.apply has no grad_fn: is it detached?")
    watch.guarded(lambda: out.backward(g))
    result.update(
        grad_x=_grad(x), grad_weight=_grad(w), forward_calls=forward_calls, backward_calls=watch.calls - forward_calls
    )
    if b is not None:
        result["grad_bias"] = _grad(b)
    return result


def _benchmark(module, inputs: dict, harness) -> dict:
    """The student's matmul timed by ``kernels.bench`` with the matmul methods refused, then cuBLAS."""
    yours_shape, cublas_shape = inputs["shapes"]
    with sandboxed.refused(torch.Tensor, METHODS, harness):
        yours = bench.run_case(module.matmul, {**inputs, "shapes": [yours_shape]}, marks=harness)
    reference = _time_cublas_in_the_students_process(inputs, cublas_shape, harness)
    return {**yours, "shapes": yours["shapes"] + reference["shapes"]}


def _time_cublas_in_the_students_process(inputs: dict, shape: dict, harness) -> dict:
    """cuBLAS (``torch.mm``, TF32 off) timed by ``kernels.bench``, for the metric's denominator.

    THE REMAINING INVARIANT-1 GAP of this lab (docs/security.md, "The grading invariants"): this
    reference is timed in the student's own process, where the submission could slow it down and
    so inflate its ratio; grader.py only rejects a cuBLAS figure below a loose plausibility bound
    (MIN_CUBLAS_PEAK_FRACTION). It belongs in the clean reference process, as a reference benchmark
    batch, once the runner can time one there; until then it stays here, alone in this function.
    """
    torch.set_float32_matmul_precision("highest")  # cuBLAS in true fp32 (no TF32), like the kernel
    return bench.run_case(harness.original("torch.mm"), {**inputs, "shapes": [shape]}, marks=harness)

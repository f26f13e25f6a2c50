"""The sandbox side's library: what a lab's ``run.py`` builds on, shipped with every job.

``run.py`` runs in the student's own process, so nothing here decides a grade or keeps a figure
that ranks: these are the guards that catch honest mistakes and the obvious shortcuts (calling
the library, not launching a kernel), with messages that say what to change. Each patch is
undone when its block ends, whatever happens inside it.

For distributed labs, whose ranks the worker runs each in a sandbox of its own
(``gpu_runner.rankgroup``): ``refuse_collectives`` (the process group's own collectives, in a
rank, for the rest of its life) and ``count_sent_bytes`` (the bytes a rank passes to the group's
``send``: a per-rank hint for a check's message; the worker counts what crossed the network).

Importable in the sandbox as ``labs.sandboxed`` (the runner's ``lib/`` folder), like
``kernels.bench``; it imports torch and nothing of the project's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def refused(owner: object, names, harness, *, label: str | None = None) -> Iterator[None]:
    """Within the block, ``owner.<name>`` raises the harness's forbidden-call error for every name
    in ``names`` that ``owner`` has (``refused(torch.Tensor, ("softmax",), harness)``)."""
    label = label or getattr(owner, "__qualname__", str(owner))
    saved = {name: getattr(owner, name) for name in names if hasattr(owner, name)}

    def refusing(name: str):
        dotted = f"torch.{label}.{name}" if label == "Tensor" else f"{label}.{name}"

        def refuse(*args, **kwargs):
            raise harness.forbidden(dotted)

        return refuse

    try:
        for name in saved:
            setattr(owner, name, refusing(name))
        yield
    finally:
        for name, original in saved.items():
            setattr(owner, name, original)


class Launches:
    """How many Triton kernels were launched in a ``count_launches()`` block."""

    def __init__(self) -> None:
        self.count = 0


@contextlib.contextmanager
def count_launches() -> Iterator[Launches]:
    """Count Triton kernel launches (compiled or in the interpreter) within the block."""
    import triton

    kinds = [triton.runtime.jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        kinds.append(InterpretedFunction)
    except ImportError:
        pass
    launches = Launches()
    saved = {kind: kind.run for kind in kinds}

    def counted(original):
        def run_kernel(self, *args, **kwargs):
            launches.count += 1
            return original(self, *args, **kwargs)

        return run_kernel

    try:
        for kind in kinds:
            kind.run = counted(saved[kind])
        yield launches
    finally:
        for kind, original in saved.items():
            kind.run = original


def poison(numel: int, dtype: torch.dtype, device: str | torch.device) -> None:
    """Allocate and free ``numel`` NaNs: the caching allocator hands that memory to the next
    allocation of that size, so elements a kernel never writes show as NaN, not as a lucky value."""
    torch.full((max(int(numel), 1),), float("nan"), dtype=dtype, device=device)


def plain(value, what: str) -> torch.Tensor:
    """``value`` detached on the CPU, or a TypeError saying what ``what`` should have returned."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} returned {type(value).__name__}, expected a torch.Tensor")
    return value.detach().cpu()


# ------------------------------------------------------------------------------------------------
# a model's computation as data, for the worker to run (labs.trusted.run_graph)
# ------------------------------------------------------------------------------------------------

GRAPH_FORMAT = "aten-graph/1"
MAX_ARG_DEPTH = 2  # an argument may be a list of lists, no deeper (labs.trusted reads no deeper)


class ExportFailed(Exception):
    """The model's forward could not be exported as a graph the worker can run."""


def export_graph(model: torch.nn.Module, example: torch.Tensor) -> dict:
    """``model``'s inference computation on inputs shaped like ``example``, as plain data.

    The model is put in eval mode and captured with ``torch.export.export(model, (example,))``
    (the shapes are fixed to ``example``'s). The result is what a worker can check and run
    without importing any of the code that built it (``labs.trusted.run_graph``)::

        {"format": "aten-graph/1",
         "inputs": [{"name": "x", "shape": [450, 64], "dtype": "float32"}],
         "tensors": {"p_0_weight": tensor, ...},    # parameters, buffers and constants, by name
         "nodes": [{"name": "linear", "op": "aten.linear.default",
                    "args": [{"ref": "x"}, {"ref": "p_0_weight"}, {"ref": "p_0_bias"}], "kwargs": {}}, ...],
         "outputs": [{"ref": "linear_2"}]}

    An argument is a reference ``{"ref": name}`` (to an input, a tensor or an earlier node), a
    number, bool, string or None, a list of arguments, or a ``{"dtype"|"memory_format"|"device"|
    "layout": name}``. The first export in a process imports ``torch._dynamo``: a few seconds of CPU.
    """
    import torch.export

    model.eval()
    try:
        program = torch.export.export(model, (example,))
    except Exception as exc:  # noqa: BLE001 - any failure to trace is the model's
        text = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ""
        raise ExportFailed(
            f"torch.export could not capture the model's forward ({type(exc).__name__}: {text}); build it from "
            "standard layers, without Python control flow that depends on tensor values"
        ) from None
    inputs, tensors = _graph_inputs(program, example)
    nodes, outputs = [], []
    for node in program.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            outputs = [_graph_arg(value, 0) for value in node.args[0]]
            continue
        nodes.append(
            {
                "name": node.name,
                "op": _graph_op(node),
                "args": [_graph_arg(value, 0) for value in node.args],
                "kwargs": {str(key): _graph_arg(value, 0) for key, value in node.kwargs.items()},
            }
        )
    return {"format": GRAPH_FORMAT, "inputs": inputs, "tensors": tensors, "nodes": nodes, "outputs": outputs}


def _graph_inputs(program, example: torch.Tensor) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The user input's description, and every parameter, buffer and constant by its placeholder name."""
    from torch.export.graph_signature import InputKind

    inputs, tensors = [], {}
    for spec in program.graph_signature.input_specs:
        name = spec.arg.name
        if spec.kind == InputKind.USER_INPUT:
            inputs.append(
                {"name": name, "shape": list(example.shape), "dtype": str(example.dtype).removeprefix("torch.")}
            )
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            value = (
                program.state_dict[spec.target] if spec.target in program.state_dict else program.constants[spec.target]
            )
            if not isinstance(value, torch.Tensor):
                raise ExportFailed(f"the model's {spec.target!r} is a {type(value).__name__}, not a tensor")
            tensors[name] = value.detach().cpu().clone().contiguous()
        else:
            raise ExportFailed(
                f"the exported model takes a {spec.kind.name.lower()} ({spec.target}); use plain tensors"
            )
    return inputs, tensors


def _graph_op(node) -> str:
    """An ATen operator's name (``aten.linear.default``); ``getitem`` for picking from a tuple result."""
    import operator

    if node.op != "call_function":
        return f"{node.op} {node.target}"
    if node.target is operator.getitem:
        return "getitem"
    if isinstance(node.target, torch._ops.OpOverload):
        return str(node.target)
    return str(getattr(node.target, "__qualname__", None) or type(node.target).__name__)[:100]


def _graph_arg(value, depth: int):
    """One argument as plain data (the forms :func:`export_graph` lists)."""
    import torch.fx

    if isinstance(value, torch.fx.Node):
        return {"ref": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        if depth >= MAX_ARG_DEPTH:
            raise ExportFailed("the exported model has arguments nested too deeply")
        return [_graph_arg(item, depth + 1) for item in value]
    for kind, label in ((torch.dtype, "dtype"), (torch.memory_format, "memory_format"), (torch.layout, "layout")):
        if isinstance(value, kind):
            return {label: str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    raise ExportFailed(f"the exported model has an argument of type {type(value).__name__}; use standard layers")


# ------------------------------------------------------------------------------------------------
# distributed labs: the guards of a rank (a process in its own sandbox)
# ------------------------------------------------------------------------------------------------

# The process group's own collectives. lab.toml forbids the torch.distributed functions; these are
# what those functions call, reachable as methods of dist.group.WORLD or of its backend.
COLLECTIVE_METHODS = (
    "allreduce allreduce_coalesced allgather allgather_coalesced allgather_into_tensor_coalesced "
    "_allgather_base all_gather_single all_gather_single_coalesced broadcast reduce reduce_scatter "
    "reduce_scatter_single reduce_scatter_single_coalesced _reduce_scatter_base reduce_scatter_tensor_coalesced "
    "alltoall alltoall_base all_to_all_single gather scatter"
).split()
# c10d ops that move no data of their own.
HARMLESS_OPS = ("barrier", "wait_tensor", "check_for_nan")

_targets: list[tuple[object, str, str]] = []
_refused_in: list[int] = []  # the pid whose patches are in place
_sent: list[SentBytes] = []


def collective_targets() -> list[tuple[object, str, str]]:
    """``(owner, attribute, label)`` of every collective :func:`refuse_collectives` refuses: the
    methods of ``ProcessGroup`` and ``Backend`` and the c10d ops (their ``send``/``recv`` too, which
    would go around :func:`count_sent_bytes`). Resolved once per process (about 20 ms)."""
    if _targets:
        return _targets
    from torch._C._distributed_c10d import Backend, ProcessGroup

    for cls in (ProcessGroup, Backend):
        for attr in COLLECTIVE_METHODS:
            if attr in vars(cls):
                _targets.append((cls, attr, f"torch.distributed.{cls.__name__}.{attr}"))
    for op_name in torch._C._dispatch_get_all_op_names():
        namespace, _, name = op_name.partition("::")
        harmless = any(word in name for word in HARMLESS_OPS)
        if namespace in ("c10d", "_c10d_functional", "_c10d_functional_autograd") and not harmless:
            owner = getattr(torch.ops, namespace)
            getattr(owner, name)  # creates the op's attribute on the namespace
            _targets.append((owner, name, f"torch.ops.{namespace}.{name}"))
    return _targets


def refuse_collectives(harness) -> None:
    """In this process (a rank), every collective of :func:`collective_targets` raises the harness's
    forbidden-call error, as lab.toml's ``torch.distributed`` names do. Once per process; for the
    rest of its life (a rank's process ends with its group)."""
    if _refused_in == [os.getpid()]:
        return
    for owner, attr, label in collective_targets():

        def stub(*args, _label=label, **kwargs):
            raise harness.forbidden(_label)

        setattr(owner, attr, stub)
    _refused_in[:] = [os.getpid()]


class SentBytes:
    """The bytes this process has passed to the process group's ``send`` (every ``dist.send``,
    ``isend``, ``batch_isend_irecv`` and ``send_object_list`` goes through it)."""

    def __init__(self) -> None:
        self.count = 0


def count_sent_bytes() -> SentBytes:
    """Count, in this process, the bytes of every tensor sent through the process group.

    A count kept in the student's process: it catches honest mistakes (whole tensors where chunks
    should go) and names the rank, but the student could alter it, so it is never the figure that
    ranks: the worker's ``network_bytes`` is. Installed once per process."""
    if _sent:
        return _sent[0]
    from torch._C._distributed_c10d import Backend, ProcessGroup

    counter = SentBytes()
    for cls in (ProcessGroup, Backend):

        def counting_send(self, tensors, *args, _send=cls.send, **kwargs):
            counter.count += sum(t.numel() * t.element_size() for t in tensors)
            return _send(self, tensors, *args, **kwargs)

        cls.send = counting_send
    _sent.append(counter)
    return counter


def forbids(harness, name: str) -> bool:
    """Whether lab.toml's forbidden ``name`` is patched out in this process: False in the timing
    phase's reference process, which imports ``reference.py`` and patches nothing."""
    try:
        harness.original(name)
    except KeyError:
        return False
    return True

"""The trusted side's library: what a lab's ``grader.py`` (``cases`` and ``check``) builds on.

It runs in the worker, never in the sandbox. A check raises :class:`CheckFailed` with a message a
student can act on; the runner turns it into a failed test. Everything a check reads from
``output`` came from the student's process: :func:`field` fetches a key with a clear message when
the result is malformed, and :func:`assert_close` checks type, shape and dtype before any math
(the runner has already refused oversized, compressed and self-repeating tensors).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the block on one torch thread: small models and matrices, where more threads only spin
    (10x the CPU time on a busy 2-core worker), and repeatable results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class CheckFailed(Exception):
    """A hidden check found the submission's output wrong; the message is shown to the student."""


def field(output, key: str, where: str = "run()"):
    """``output[key]``, or a failed check saying the result is malformed."""
    if not isinstance(output, dict):
        raise CheckFailed(f"{where} returned {type(output).__name__}, expected a dict; the result is malformed")
    if key not in output:
        raise CheckFailed(f"{where} returned no '{key}'; the result is malformed")
    return output[key]


def assert_close(actual, expected: torch.Tensor, *, what: str, rtol: float, atol: float) -> None:
    """Compare ``actual`` with ``expected`` and say where and by how much they differ."""
    if not isinstance(actual, torch.Tensor):
        raise CheckFailed(f"{what}: expected a tensor, got {type(actual).__name__}")
    if actual.shape != expected.shape:
        raise CheckFailed(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if actual.dtype != expected.dtype:
        raise CheckFailed(f"{what}: dtype {actual.dtype}, expected {expected.dtype}")
    if actual.numel() == 0:
        return
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    if not torch.isfinite(a).all() and not torch.equal(torch.isfinite(a), torch.isfinite(e)):
        bad = (~torch.isfinite(a)).nonzero()[0].tolist()
        raise CheckFailed(f"{what}: non-finite value {a[tuple(bad)].item()} at index {tuple(bad)}")
    diff = (a - e).abs()
    allowed = atol + rtol * e.abs()
    if bool((diff <= allowed).all()):
        return
    worst = int(torch.argmax(diff - allowed))
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
    max_abs = diff.max().item()
    rel = (diff / e.abs().clamp_min(1e-12)).max().item()
    raise CheckFailed(
        f"{what}: max abs error {max_abs:.3g}, max rel error {rel:.3g} (rtol {rtol:g}, atol {atol:g}); "
        f"worst at index {index}: got {a[index].item():.6g}, expected {e[index].item():.6g}"
    )


def digits_split(
    seed: int, *, test_size: int, salt: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits scaled to [0, 1], split by the seed: ``(x_train, y_train, x_test, y_test)``.

    ``salt`` keeps each lab's split its own. The held-out half stays here: hand ``run`` the
    training split only and evaluate on the rest in the worker (docs/security.md, invariant 3);
    the sandbox cannot load the digits itself (scikit-learn's data files are hidden there).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + salt))
    test, train = perm[:test_size], perm[test_size:]
    return x[train].contiguous(), y[train].contiguous(), x[test].contiguous(), y[test].contiguous()


# ------------------------------------------------------------------------------------------------
# timed cases (docs/authoring-labs.md, "Timed cases"): the worker's times and the calls' fingerprints
# ------------------------------------------------------------------------------------------------


def check_timed_calls(case: dict, output, expected, *, rtol: float, atol: float, what: str = "timed call") -> None:
    """Every timed call must have computed the right outputs, inside the timed region.

    ``output["calls"]`` holds what the student's process said of each call: each output's dot
    product with the worker's probe, computed before the call counted as done. ``expected(inputs)``
    gives the reference outputs of one call (``case["runtime"]["inputs"]``), keyed by output name
    (``"out@2"`` for rank 2's output of a distributed call, probed like ``"out"``); a fingerprint may
    differ from the reference's by ``rtol`` of ``sum|probe * reference|`` plus ``atol`` of
    ``sum|probe|``, plus what summing in the probe's dtype in another order can change
    (``16 eps`` of ``sum|probe * reference|``: rounding errors of a long sum of products with
    random signs grow like its square root, as does the sum itself, not like its absolute sum). A
    wrong output moves the fingerprint by about ``sum|probe * reference| / sqrt(n)``, far more.
    A fingerprint proves the work was done; the correctness tests catch an element slightly off.
    """
    runtime = case["runtime"]
    probes, inputs = runtime["probes"], runtime["inputs"]
    calls = field(output, "calls", "the benchmark")
    if not isinstance(calls, list) or len(calls) != len(inputs):
        raise CheckFailed("benchmark: the fingerprints of the timed calls are missing; the result is malformed")
    for number, (call, fingerprint) in enumerate(zip(inputs, calls, strict=True)):
        reference = expected(call)
        for name, output in reference.items():
            probe = probes.get(name.partition("@")[0])  # a distributed call's outputs are per rank: "out@1"
            if probe is None:
                continue  # a reference output the case does not probe
            got = fingerprint.get(name) if isinstance(fingerprint, dict) else None
            want = output.detach().to(torch.float64).reshape(-1)
            weights = probe.to(torch.float64).reshape(-1)
            value = float(torch.dot(want, weights))
            scale = float(torch.dot(want.abs(), weights.abs()))
            rounding = 16 * torch.finfo(probe.dtype).eps
            allowed = (rtol + rounding) * scale + atol * float(weights.abs().sum())
            if not isinstance(got, float) or not abs(got - value) <= allowed:
                raise CheckFailed(
                    f"benchmark: {what} {number + 1} of {len(inputs)} returned a wrong '{name}' (its dot product "
                    f"with a random probe is {got!r}, expected {value:.6g}): a timed call must compute the same "
                    "result as the tested ones, inside the call"
                )


def timing_summary(case: dict) -> dict:
    """The worker's times of a timed case: ``ratio`` (the median of the per-pair ratios of the
    student's time to the reference's, when there is a reference), ``seconds`` (the student's
    median) and a message for the student."""
    import statistics

    runtime = case["runtime"]
    mine, theirs = runtime["seconds"], runtime["reference_seconds"]
    if not mine or any(not (t > 0) for t in mine):
        raise CheckFailed("benchmark: the worker recorded no usable times")
    seconds = statistics.median(mine)
    guard = "" if runtime.get("frozen") else " (this worker cannot freeze the student's process meanwhile)"
    if theirs is None:
        return {
            "ratio": None,
            "seconds": seconds,
            "message": f"median {seconds * 1e3:.3f} ms over {len(mine)} timed calls, on the grader's clock",
        }
    ratio = statistics.median(m / t for m, t in zip(mine, theirs, strict=True))
    message = (
        f"yours {seconds * 1e3:.3f} ms, reference {statistics.median(theirs) * 1e3:.3f} ms (medians on the "
        f"grader's clock); median ratio {ratio:.3f} over {len(mine)} interleaved pairs, the reference timed in "
        f"a separate clean process{guard}"
    )
    return {"ratio": ratio, "seconds": seconds, "message": message}


# ------------------------------------------------------------------------------------------------
# a model's computation, exported in the sandbox (labs.sandboxed.export_graph), run here
# ------------------------------------------------------------------------------------------------

GRAPH_FORMAT = "aten-graph/1"
MAX_GRAPH_NUMBERS = 10_000  # parameters, buffers and constants together, unless the caller says otherwise
MAX_GRAPH_NODES = 1_000
MAX_GRAPH_ELEMENTS = 1 << 22  # the largest tensor a node may make (16 MiB of float32)
MAX_GRAPH_LIVE = 1 << 25  # elements of every value kept for later nodes, together
MAX_GRAPH_WORK = 2_000_000_000  # multiply-adds and elements touched over the whole run (about a second)
MAX_GRAPH_LIST = 256
MAX_GRAPH_ARG_DEPTH = 3
STANDARD_LAYERS = (
    "nn.Linear, nn.Conv1d/Conv2d, nn.BatchNorm1d/2d, nn.LayerNorm, nn.GroupNorm, nn.Dropout, max, average "
    "and adaptive pooling, padding, the activations of torch.nn (ReLU, GELU, Tanh, Sigmoid, SiLU, ELU, "
    "LeakyReLU, ...), nn.Softmax, nn.Flatten/Unflatten, and in forward +, -, *, /, @, reshapes, slices, "
    "torch.cat/stack, mean, sum, max and clamp"
)
# What standard layers and tensor arithmetic export to (training IR, eval mode): each runs here as the
# same ATen operator. In-place forms (nn.ReLU(inplace=True), h += x) act on this run's own copies.
_PLAIN_OPS = (
    # linear algebra
    "linear.default addmm.default mm.default matmul.default bmm.default t.default "
    # activations
    "relu.default relu_.default tanh.default tanh_.default sigmoid.default sigmoid_.default gelu.default "
    "gelu_.default silu.default silu_.default elu.default elu_.default leaky_relu.default leaky_relu_.default "
    "hardtanh.default hardtanh_.default softplus.default mish.default mish_.default hardswish.default "
    "hardswish_.default hardsigmoid.default hardsigmoid_.default selu.default selu_.default celu.default "
    "celu_.default prelu.default softmax.int log_softmax.int _softmax.default _log_softmax.default "
    # convolution, pooling, normalisation (batch norm and dropout: see _CHECKED_OPS)
    "conv1d.default conv1d.padding conv2d.default conv2d.padding convolution.default max_pool1d.default "
    "max_pool2d.default avg_pool1d.default avg_pool2d.default adaptive_avg_pool1d.default "
    "adaptive_avg_pool2d.default adaptive_max_pool1d.default adaptive_max_pool2d.default amax.default max.dim "
    "pad.default "
    "_native_batch_norm_legit_no_training.default layer_norm.default group_norm.default "
    # shapes
    "view.default reshape.default _unsafe_view.default flatten.using_ints unflatten.int unsqueeze.default "
    "squeeze.default squeeze.dim squeeze.dims permute.default transpose.int clone.default contiguous.default "
    "slice.Tensor narrow.default select.int chunk.default split.Tensor cat.default stack.default expand.default "
    "expand_as.default "
    # arithmetic and reductions
    "add.Tensor add.Scalar add_.Tensor add_.Scalar sub.Tensor sub.Scalar sub_.Tensor sub_.Scalar rsub.Tensor "
    "rsub.Scalar mul.Tensor mul.Scalar mul_.Tensor mul_.Scalar div.Tensor div.Scalar div_.Tensor div_.Scalar "
    "reciprocal.default neg.default clamp.default clamp_min.default clamp_max.default mean.dim mean.default "
    "sum.dim_IntList sum.default "
    # constants written in forward (torch.tensor([...])): counted with the parameters
    "lift_fresh_copy.default detach.default detach_.default"
).split()
# Operators allowed in inference form only: (position, keyword) of the flag that must be False.
_CHECKED_OPS = {
    "batch_norm.default": (5, "training"),
    "dropout.default": (2, "train"),
    "dropout_.default": (2, "train"),
    "feature_dropout.default": (2, "train"),
    "feature_dropout_.default": (2, "train"),
    "alpha_dropout.default": (2, "train"),
    "alpha_dropout_.default": (2, "train"),
    "feature_alpha_dropout.default": (2, "train"),
    "feature_alpha_dropout_.default": (2, "train"),
}
_CONTRACTIONS = {"linear", "addmm", "mm", "matmul", "bmm", "conv1d", "conv2d", "convolution"}
_GRAPH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64, "bool": torch.bool}
_GRAPH_CONSTANTS = {
    "memory_format": {"contiguous_format": torch.contiguous_format, "preserve_format": torch.preserve_format},
    "layout": {"strided": torch.strided},
    "device": {"cpu": torch.device("cpu")},
}


def _aten(name: str):
    packet, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, packet), overload)


GRAPH_OPS = {f"aten.{name}": _aten(name) for name in [*_PLAIN_OPS, *_CHECKED_OPS]}
GRAPH_OPS["aten.to.dtype"] = _aten("to.dtype")  # x.float(): float32 or float64 only
GRAPH_OPS["aten._assert_tensor_metadata.default"] = None  # emitted with .to(): nothing to run
GRAPH_OPS["getitem"] = None  # one result of an operator that returns several (chunk, adaptive max pooling)


def run_graph(graph, inputs, *, max_numbers: int = MAX_GRAPH_NUMBERS):
    """Run a graph from :func:`labs.sandboxed.export_graph` on ``inputs`` (a tensor, or a list of
    them in the graph's input order) and return its output (a tuple if it has several).

    Only the operators of ``GRAPH_OPS`` run, as the ATen operators they name, in the listed order;
    every reference must name an input, a tensor or an earlier node. The graph's tensors may hold
    ``max_numbers`` numbers in all. Each node is first run on meta tensors (shapes only), so a
    node that would make more than ``MAX_GRAPH_ELEMENTS`` elements, or a graph that would keep
    more than ``MAX_GRAPH_LIVE`` or do more than ``MAX_GRAPH_WORK``, is refused before it costs
    anything. Whatever is wrong raises :class:`CheckFailed` with a message for the student.
    """
    nodes, outputs, env = _graph_start(graph, inputs, max_numbers)
    uses = _graph_uses(nodes, outputs)
    live = sum(_numel(value) for value in env.values())
    work = 0
    with torch.no_grad():
        for node in nodes:
            name, op = node["name"], node["op"]
            args = _graph_value(node["args"], env, name, op, 0)
            kwargs = {key: _graph_value(value, env, name, op, 1) for key, value in node["kwargs"].items()}
            work += _graph_work(name, op, args, kwargs, _graph_call(name, op, _meta(args), _meta(kwargs)))
            if work > MAX_GRAPH_WORK:
                raise CheckFailed(f"the exported model does more than {MAX_GRAPH_WORK:.0e} operations by node {name!r}")
            env[name] = _graph_call(name, op, args, kwargs)
            live += _numel(env[name])
            for ref in _node_refs(node):
                uses[ref] -= 1
                if uses[ref] == 0:
                    live -= _numel(env.pop(ref, None))
            if live > MAX_GRAPH_LIVE:
                raise CheckFailed(f"the exported model keeps more than {MAX_GRAPH_LIVE} numbers alive at node {name!r}")
    results = tuple(_graph_value(ref, env, "the output", "output", 1) for ref in outputs)
    return results[0] if len(results) == 1 else results


def _graph_start(graph, inputs, max_numbers: int) -> tuple[list, list, dict]:
    """The graph's nodes and outputs, checked for form, and the values nodes start from (copies)."""
    parts = {"format": str, "inputs": list, "tensors": dict, "nodes": list, "outputs": list}
    for key, kind in parts.items():
        if not isinstance(field(graph, key, "the exported model"), kind):
            raise CheckFailed(f"the exported model's '{key}' is not a {kind.__name__}; the graph is malformed")
    if graph["format"] != GRAPH_FORMAT:
        raise CheckFailed(f"the exported model is in format {graph['format'][:40]!r}, expected {GRAPH_FORMAT!r}")
    nodes, outputs = graph["nodes"], graph["outputs"]
    if len(nodes) > MAX_GRAPH_NODES:
        raise CheckFailed(f"the exported model has {len(nodes)} operations, more than {MAX_GRAPH_NODES}")
    if not outputs:
        raise CheckFailed("the exported model has no output")
    env = {}
    numbers = 0
    for name, tensor in graph["tensors"].items():
        if (
            not isinstance(name, str)
            or not isinstance(tensor, torch.Tensor)
            or tensor.dtype not in _GRAPH_DTYPES.values()
        ):
            raise CheckFailed(f"the exported model's tensor {str(name)[:60]!r} is not a float, int64 or bool tensor")
        numbers += tensor.numel()
        env[name] = tensor.clone()
    if numbers > max_numbers:
        raise CheckFailed(
            f"the exported model holds {numbers} numbers in its parameters, buffers and constants, more than "
            f"{max_numbers}"
        )
    given = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if len(given) != len(graph["inputs"]):
        raise CheckFailed(f"the exported model takes {len(graph['inputs'])} inputs, the grader has {len(given)}")
    for spec, value in zip(graph["inputs"], given, strict=True):
        name, shape = field(spec, "name", "an input of the exported model"), field(spec, "shape", "an input")
        if not isinstance(name, str) or name in env or list(value.shape) != shape:
            raise CheckFailed(
                f"the exported model's input {str(name)[:60]!r} was exported for shape {str(shape)[:60]}, "
                f"not the grader's {list(value.shape)}"
            )
        env[name] = value.detach().clone()
    names = set(env)
    for node in nodes:
        if not isinstance(node, dict) or not isinstance(node.get("name"), str) or not isinstance(node.get("op"), str):
            raise CheckFailed("the exported model has a malformed node (name and op must be strings)")
        if node["name"] in names:
            raise CheckFailed(f"the exported model names two values {node['name'][:60]!r}; the graph is malformed")
        names.add(node["name"])
        if not isinstance(node.get("args"), list) or not isinstance(node.get("kwargs"), dict):
            raise CheckFailed(f"the exported model's node {node['name'][:60]!r} has malformed arguments")
        if node["op"] not in GRAPH_OPS:
            raise CheckFailed(
                f"the exported model uses {node['op'][:80]}, which the grader does not run: build the model from "
                f"standard layers only ({STANDARD_LAYERS})"
            )
    return nodes, outputs, env


def _refs(values: list) -> list[str]:
    """The names ``values`` refer to, read as :func:`_graph_value` reads them (lists, then references)."""
    found, stack = [], [(value, 1) for value in values]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict) and len(item) == 1 and isinstance(item.get("ref"), str):
            found.append(item["ref"])
        elif isinstance(item, list) and depth < MAX_GRAPH_ARG_DEPTH:
            stack.extend((child, depth + 1) for child in item)
    return found


def _node_refs(node: dict) -> list[str]:
    return _refs([*node["args"], *node["kwargs"].values()])


def _graph_uses(nodes: list, outputs: list) -> dict:
    """How many references to each value are left: a value is dropped after its last use."""
    uses: dict[str, int] = {}
    for node in nodes:
        for ref in _node_refs(node):
            uses[ref] = uses.get(ref, 0) + 1
    for ref in _refs(outputs):
        uses[ref] = uses.get(ref, 0) + len(nodes) + 1  # kept to the end
    return uses


def _graph_value(value, env: dict, name: str, op: str, depth: int):
    """An argument as a real value: references resolved, dtypes and formats looked up, nothing else."""
    if depth > MAX_GRAPH_ARG_DEPTH:
        raise CheckFailed(f"node {name[:60]!r} ({op[:60]}): arguments nested more than {MAX_GRAPH_ARG_DEPTH} deep")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str) and len(value) <= 32:
        return value
    if isinstance(value, list) and len(value) <= MAX_GRAPH_LIST:
        return [_graph_value(item, env, name, op, depth + 1) for item in value]
    if isinstance(value, dict) and len(value) == 1:
        ((kind, label),) = value.items()
        if kind == "ref" and isinstance(label, str):
            if label not in env:
                raise CheckFailed(
                    f"node {name[:60]!r} ({op[:60]}) uses {label[:60]!r}, which is not an input, a tensor or an "
                    "earlier node of the exported model (nodes run in order: no cycles)"
                )
            return env[label]
        if kind == "dtype" and label in _GRAPH_DTYPES:
            return _GRAPH_DTYPES[label]
        if kind in _GRAPH_CONSTANTS and label in _GRAPH_CONSTANTS[kind]:
            return _GRAPH_CONSTANTS[kind][label]
    raise CheckFailed(f"node {name[:60]!r} ({op[:60]}) has an argument the grader does not accept: {str(value)[:80]}")


def _meta(value):
    """``value`` with every tensor replaced by a meta tensor of its shape (no data, no cost)."""
    if isinstance(value, torch.Tensor):
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    if isinstance(value, (list, tuple)):
        return type(value)(_meta(item) for item in value)
    if isinstance(value, dict):
        return {key: _meta(item) for key, item in value.items()}
    return value


def _numel(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (list, tuple)):
        return sum(_numel(item) for item in value)
    return 0


def _graph_call(name: str, op: str, args: list, kwargs: dict):
    """One node: the ATen operator on its arguments, with the checks its kind needs."""
    where = f"node {name[:60]!r} ({op})"
    if op == "getitem":
        if len(args) != 2 or not isinstance(args[0], (list, tuple)) or type(args[1]) is not int:
            raise CheckFailed(f"{where}: getitem picks one result of an earlier node by its index")
        if not -len(args[0]) <= args[1] < len(args[0]):
            raise CheckFailed(f"{where}: index {args[1]} out of range")
        return args[0][args[1]]
    if op == "aten._assert_tensor_metadata.default":
        return None
    short = op.removeprefix("aten.")
    if short in _CHECKED_OPS:
        position, keyword = _CHECKED_OPS[short]
        flag = args[position] if len(args) > position else kwargs.get(keyword, False)
        if flag is not False:
            raise CheckFailed(
                f"{where} runs in training mode: export the model in eval mode (dropout off, batch norm with "
                "running statistics: keep track_running_stats=True)"
            )
    if op == "aten.to.dtype" and (len(args) < 2 or args[1] not in (torch.float32, torch.float64)):
        raise CheckFailed(f"{where}: only conversions to float32 or float64 are allowed")
    try:
        return GRAPH_OPS[op](*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever an operator makes of its arguments is the graph's fault
        raise CheckFailed(f"{where} failed: {type(exc).__name__}: {str(exc)[:300]}") from None


def _graph_work(name: str, op: str, args: list, kwargs: dict, result) -> int:
    """What running a node costs (from its meta run): every element it reads and makes, and for a
    matrix product or a convolution the multiply-adds; a node making too large a tensor is refused."""
    made = [result] if isinstance(result, torch.Tensor) else list(result) if isinstance(result, (list, tuple)) else []
    for tensor in made:
        if isinstance(tensor, torch.Tensor) and tensor.numel() > MAX_GRAPH_ELEMENTS:
            raise CheckFailed(
                f"node {name[:60]!r} ({op}) would make a tensor of shape {list(tensor.shape)[:8]} ({tensor.numel()} "
                f"numbers), more than {MAX_GRAPH_ELEMENTS}"
            )
    work = _numel(made) + sum(_numel(value) for value in [*args, *kwargs.values()])
    packet = op.removeprefix("aten.").partition(".")[0]
    tensors = [value for value in args if isinstance(value, torch.Tensor)]
    if packet in _CONTRACTIONS and len(tensors) >= 2:
        first, second = (tensors[1], tensors[2]) if packet == "addmm" and len(tensors) > 2 else tensors[:2]
        inner = (
            second[0].numel()
            if packet.startswith("conv") and second.dim() > 0
            else first.shape[-1]
            if first.dim()
            else 1
        )
        work += _numel(made) * int(inner)
    return work

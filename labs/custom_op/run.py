"""The sandbox side of the ``custom_op`` lab: exercise the student's ``MyLinearFunction`` and
``MyLinear`` on one case, or on one timed call, and return plain data.

Shipped into the sandbox as a file (lab contract v2) and imported before the student's module.
Errors in the student's code propagate and fail the case with their own type and message; wrong
*types* returned by the student become a TypeError that says what was expected. Nothing here
decides a grade: ``grader.py`` checks every result in the worker.
"""

from __future__ import annotations

import torch
from torch import nn

MLP_EPOCHS = 15
MLP_BATCH = 64


def _as_tensor(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} returned {type(value).__name__}, expected a torch.Tensor")
    return value


def _leaf(t: torch.Tensor, grad: bool = True) -> torch.Tensor:
    # clone() keeps the strides of a dense view, so a transposed input stays non-contiguous.
    return t.detach().clone().requires_grad_(grad)


def _grad_of(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None or t.grad is None else t.grad.detach().clone()


def _apply(module, x, w, b) -> torch.Tensor:
    fn = module.MyLinearFunction
    out = fn.apply(x, w) if b is None else fn.apply(x, w, b)
    return _as_tensor(out, "MyLinearFunction.apply")


def _with_graph(out: torch.Tensor) -> torch.Tensor:
    if out.grad_fn is None:
        raise TypeError("the output of MyLinearFunction.apply has no grad_fn: is it detached?")
    return out


def _fwd_bwd(module, x, w, b, g) -> dict:
    x, w, b = _leaf(x), _leaf(w), None if b is None else _leaf(b)
    out = _with_graph(_apply(module, x, w, b))
    out.backward(g)
    result = {"out": out.detach().clone(), "grad_x": _grad_of(x), "grad_weight": _grad_of(w)}
    if b is not None:
        result["grad_bias"] = _grad_of(b)
    return result


def _describe_params(layer: nn.Module) -> dict:
    params = dict(layer.named_parameters())
    return {
        "param_names": sorted(params),
        "param_shapes": {name: list(p.shape) for name, p in params.items()},
        "weight_is_parameter": isinstance(getattr(layer, "weight", None), nn.Parameter),
        "bias_is_parameter": isinstance(getattr(layer, "bias", None), nn.Parameter),
        "bias_attr": "missing" if not hasattr(layer, "bias") else type(layer.bias).__name__,
    }


def _module_fwd_bwd(layer: nn.Module, inputs: dict) -> dict:
    layer = layer.double()
    with torch.no_grad():
        layer.weight.copy_(inputs["weight"])
        if inputs.get("bias") is not None:
            layer.bias.copy_(inputs["bias"])
    x = inputs["x"].detach().clone().requires_grad_()
    out = _as_tensor(layer(x), "MyLinear.forward")
    grad_fn = "None" if out.grad_fn is None else type(out.grad_fn).__name__
    out.backward(inputs["grad_output"])
    result = {"out": out.detach().clone(), "grad_fn": grad_fn, "grad_x": _grad_of(x)}
    result["grad_weight"] = _grad_of(layer.weight)
    if inputs.get("bias") is not None:
        result["grad_bias"] = _grad_of(layer.bias)
    return result


# --------------------------------------------------------------------------------------------
# one function per kind of case
# --------------------------------------------------------------------------------------------


def _forward(module, inputs: dict) -> dict:
    out = _apply(module, inputs["x"], inputs["weight"], inputs["bias"])
    return {"out": out.detach().clone()}


def _gradients(module, inputs: dict) -> dict:
    return _fwd_bwd(module, inputs["x"], inputs["weight"], inputs["bias"], inputs["grad_output"])


def _non_contiguous(module, inputs: dict) -> dict:
    return {
        "transposed_2d": _fwd_bwd(
            module, inputs["x_t"].t(), inputs["weight_t"].t(), inputs["bias_2d"], inputs["grad_output_2d"]
        ),
        "transposed_3d": _fwd_bwd(
            module,
            inputs["x_sbf"].transpose(0, 1),
            inputs["weight_3d"],
            inputs["bias_3d"],
            inputs["grad_output_sbf"].transpose(0, 1),
        ),
    }


def _bias_none(module, inputs: dict) -> dict:
    result = {"function": _fwd_bwd(module, inputs["x"], inputs["weight"], None, inputs["grad_output"])}
    out_f, in_f = inputs["weight"].shape
    layer = module.MyLinear(in_f, out_f, bias=False)
    params = result["module_params"] = _describe_params(layer)
    if params["param_names"] == ["weight"] and params["weight_is_parameter"]:
        result["module"] = _module_fwd_bwd(layer, {**inputs, "bias": None})
    return result


def _raw_backward(out: torch.Tensor, g: torch.Tensor) -> list:
    """backward's tuple as returned: through the graph node, which keeps gradients the autograd
    engine would silently throw away."""
    with torch.no_grad():
        raw = out.grad_fn.apply(g)
    if not isinstance(raw, (tuple, list)):
        raw = (raw,)
    described = []
    for item in raw:
        if item is None or isinstance(item, torch.Tensor):
            described.append(None if item is None else item.detach().clone())
        else:
            described.append(f"<{type(item).__name__}>")
    return described


def _needs_input_grad(module, inputs: dict) -> dict:
    g = inputs["grad_output"]
    result = {}
    for label, flags in (("weight_only", (False, True, False)), ("x_and_bias", (True, False, True))):
        tensors = (inputs["x"], inputs["weight"], inputs["bias"])
        x, w, b = (_leaf(t, flag) for t, flag in zip(tensors, flags, strict=True))
        out = _with_graph(_apply(module, x, w, b))
        described = _raw_backward(out, g)
        out.backward(g)
        result[label] = {"raw": described, "grad_x": _grad_of(x), "grad_weight": _grad_of(w), "grad_bias": _grad_of(b)}
    return result


def _my_linear(module, inputs: dict) -> dict:
    layer = module.MyLinear(inputs["in_features"], inputs["out_features"])
    result = _describe_params(layer)
    result["in_features"] = getattr(layer, "in_features", None)
    result["out_features"] = getattr(layer, "out_features", None)
    if result["weight_is_parameter"]:
        result["init_weight"] = layer.weight.detach().clone()
    if result["bias_is_parameter"]:
        result["init_bias"] = layer.bias.detach().clone()
    shapes = {"weight": list(inputs["weight"].shape), "bias": list(inputs["bias"].shape)}
    if result["weight_is_parameter"] and result["bias_is_parameter"] and result["param_shapes"] == shapes:
        result["forward"] = _module_fwd_bwd(layer, inputs)
    return result


def _mlp_digits(module, inputs: dict) -> dict:
    """Train MyLinear(64, 64) -> ReLU -> MyLinear(64, 10) on the training split; the worker
    evaluates the weights on the held-out split, which never enters the sandbox."""
    torch.manual_seed(0)
    model = nn.Sequential(module.MyLinear(64, 64), nn.ReLU(), module.MyLinear(64, 10))
    params = list(model.parameters())
    if not params:
        raise TypeError("MyLinear registered no parameters, so there is nothing to train")
    x, y = inputs["x_train"], inputs["y_train"]
    opt = torch.optim.Adam(params, lr=1e-2)
    shuffle = torch.Generator().manual_seed(0)
    for _epoch in range(MLP_EPOCHS):
        order = torch.randperm(len(y), generator=shuffle)
        for start in range(0, len(y), MLP_BATCH):
            idx = order[start : start + MLP_BATCH]
            logits = _as_tensor(model(x[idx]), "the MLP built from MyLinear")
            loss = nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}


CASES = {
    "forward": _forward,
    "fwd_bwd": _gradients,
    "non_contiguous": _non_contiguous,
    "bias_none": _bias_none,
    "needs_input_grad": _needs_input_grad,
    "module": _my_linear,
    "mlp_digits": _mlp_digits,
}


def run(module, inputs: dict, harness) -> dict:
    """One correctness case."""
    kind = inputs["kind"]
    if kind not in CASES:
        raise ValueError(f"unknown case kind {kind!r}")
    return CASES[kind](module, inputs)


def timed(module, inputs: dict, harness) -> dict:
    """One timed call: forward + backward of ``MyLinearFunction`` on this call's fresh inputs.

    The reference process runs this very function with ``reference.py`` as ``module`` (torch's
    ``F.linear``), so both sides pay the same overhead. The worker fingerprints the three gradients
    before the call counts as done.
    """
    x, w, b = (inputs[k].detach().requires_grad_() for k in ("x", "weight", "bias"))
    out = _with_graph(_apply(module, x, w, b))
    out.backward(inputs["grad_output"])
    grads = {"grad_x": x.grad, "grad_weight": w.grad, "grad_bias": b.grad}
    for name, grad in grads.items():
        if grad is None:
            raise TypeError(f"backward gave no gradient for {name.removeprefix('grad_')}, which requires grad")
    return grads

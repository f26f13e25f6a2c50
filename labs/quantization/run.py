"""The sandbox side of ``quantization``: exercise the student's ``quantize.py`` on one case and
return plain data.

Shipped into the sandbox as a file (lab contract v2) and imported before the student's module.
Errors in the student's code propagate and fail the case with their own type and message; wrong
*types* returned by the student become a TypeError that says what was expected. Nothing here
decides a grade, and the held-out test images never come here: ``compress`` gets the training
split, its model is run on a batch of check images (training images and random pixels) only to
prove it computes what its layers say, and the worker rebuilds that model from its layers and
scores it on the test images after this process has finished.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WIDTH_NAMES = (
    "weight_width",
    "weight_frac_width",
    "input_width",
    "input_frac_width",
    "bias_width",
    "bias_frac_width",
)


def _as_tensor(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} returned {type(value).__name__}, expected a torch.Tensor")
    return value


def _plain(value):
    """An int stays an int; anything else becomes its repr, for the checker to name."""
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else repr(value)


def _widths(layer) -> dict:
    return {name: _plain(getattr(layer, name, None)) for name in WIDTH_NAMES}


def _build(layers: list[dict]) -> nn.Sequential:
    """An MLP of nn.Linear layers with these weights and biases, ReLU between them."""
    modules: list[nn.Module] = []
    for i, values in enumerate(layers):
        rows, cols = values["weight"].shape
        linear = nn.Linear(cols, rows)
        with torch.no_grad():
            linear.weight.copy_(values["weight"])
            linear.bias.copy_(values["bias"])
        modules.append(linear)
        if i < len(layers) - 1:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def _refuse_library_pruning(model: nn.Module, harness) -> None:
    from torch.nn.utils import prune

    for sub in model.modules():
        for hook in sub._forward_pre_hooks.values():
            methods = getattr(hook, "_pruning_methods", (hook,))
            if any(isinstance(m, prune.L1Unstructured) for m in methods):
                raise harness.forbidden("torch.nn.utils.prune.L1Unstructured")


def _effective(model: nn.Module, in_features: int) -> dict:
    """Each nn.Linear's weight and bias as the forward pass sees them (after one forward)."""
    with torch.no_grad():
        model(torch.zeros(2, in_features))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return {
        "weights": [_as_tensor(m.weight, "layer.weight").detach().clone() for m in linears],
        "biases": [None if m.bias is None else m.bias.detach().clone() for m in linears],
    }


# --------------------------------------------------------------------------------------------
# one function per kind of case
# --------------------------------------------------------------------------------------------


def _quantize(module, inputs: dict, harness) -> dict:
    results = []
    for call in inputs["calls"]:
        out = module.quantize_fixed(call["x"], call["width"], call["frac_width"])
        results.append(_as_tensor(out, "quantize_fixed").detach().clone())
    return {"outputs": results}


def _ste(module, inputs: dict, harness) -> dict:
    x = inputs["x"].detach().clone().requires_grad_()
    out = _as_tensor(module.quantize_fixed(x, inputs["width"], inputs["frac_width"]), "quantize_fixed")
    result = {"out": out.detach().clone(), "has_grad_fn": out.grad_fn is not None, "grad": None}
    if out.grad_fn is not None:
        out.backward(inputs["grad_output"])
        result["grad"] = None if x.grad is None else x.grad.detach().clone()
    return result


def _quant_linear(module, inputs: dict, harness) -> dict:
    in_f, out_f, widths = inputs["in_features"], inputs["out_features"], inputs["widths"]
    layer = module.QuantLinear(in_f, out_f, bias=True, **widths)
    if not isinstance(layer, nn.Linear):
        return {"is_linear": False}
    result = {"is_linear": True, "attributes": _widths(layer), "defaults": _widths(module.QuantLinear(3, 2))}
    with torch.no_grad():
        layer.weight.copy_(inputs["weight"])
        layer.bias.copy_(inputs["bias"])
    x = inputs["x"].detach().clone().requires_grad_()
    out = _as_tensor(layer(x), "QuantLinear.forward")
    if out.grad_fn is None:
        raise TypeError("the output of QuantLinear.forward has no grad_fn: is it detached?")
    out.backward(inputs["grad_output"])
    grads = [None if t.grad is None else t.grad.detach().clone() for t in (x, layer.weight, layer.bias)]
    result["with_bias"] = {"out": out.detach().clone(), "grad_x": grads[0], "grad_weight": grads[1]}
    result["with_bias"]["grad_bias"] = grads[2]
    no_bias = module.QuantLinear(in_f, out_f, bias=False, **widths)
    result["no_bias_attr"] = type(getattr(no_bias, "bias", "missing")).__name__
    with torch.no_grad():
        no_bias.weight.copy_(inputs["weight"])
        result["no_bias"] = {"out": _as_tensor(no_bias(inputs["x"]), "QuantLinear.forward").detach().clone()}
    return result


def _prune_sparsity(module, inputs: dict, harness) -> dict:
    model = _build(inputs["layers"])
    in_features = inputs["layers"][0]["weight"].shape[1]
    stages = []
    for sparsity in inputs["sparsities"]:
        module.prune_l1(model, sparsity)
        _refuse_library_pruning(model, harness)
        stages.append(_effective(model, in_features))
    return {"stages": stages}


def _prune_mask(module, inputs: dict, harness) -> dict:
    model = _build(inputs["layers"])
    in_features = inputs["layers"][0]["weight"].shape[1]
    module.prune_l1(model, inputs["sparsity"])
    _refuse_library_pruning(model, harness)
    before = _effective(model, in_features)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    model.train()
    for _step in range(inputs["steps"]):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs["x"]), inputs["y"]).backward()
        optimizer.step()
    return {"before": before, "after": _effective(model, in_features)}


def _describe(compressed: nn.Module, module) -> list[dict]:
    """The compressed model layer by layer: float weights, biases and, for a QuantLinear, its widths."""
    layers = []
    for index, child in enumerate(compressed):
        if isinstance(child, nn.Linear):
            layer = {
                "kind": "linear",
                "quantized": isinstance(child, module.QuantLinear),
                "weight": _as_tensor(child.weight, f"layer {index}: weight").detach().clone(),
                "bias": None if child.bias is None else child.bias.detach().clone(),
            }
            if layer["quantized"]:
                layer["widths"] = _widths(child)
            layers.append(layer)
        elif isinstance(child, nn.ReLU):
            layers.append({"kind": "relu"})
        else:
            raise TypeError(
                f"compress() returned a model with a {type(child).__name__} at position {index}; only "
                "QuantLinear, nn.Linear and nn.ReLU layers are allowed"
            )
    return layers


def _compress(module, inputs: dict, harness) -> dict:
    """compress() on the training split; its logits on the check images, and its layers."""
    torch.manual_seed(inputs["seed"])
    hidden = inputs["hidden"]
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    model.load_state_dict(inputs["state_dict"])
    dataset = torch.utils.data.TensorDataset(inputs["x_train"], inputs["y_train"])
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=inputs["batch_size"],
        shuffle=True,
        generator=torch.Generator().manual_seed(inputs["seed"]),
    )
    compressed = module.compress(model, loader)
    if not isinstance(compressed, nn.Sequential):
        raise TypeError(
            f"compress() returned {type(compressed).__name__}; return an nn.Sequential of QuantLinear, "
            "nn.Linear and nn.ReLU layers"
        )
    compressed.eval()
    with torch.no_grad():
        logits = _as_tensor(compressed(inputs["x_check"]), "the compressed model").detach().clone()
    return {"logits": logits, "layers": _describe(compressed, module)}


CASES = {
    "quantize": _quantize,
    "ste": _ste,
    "quant_linear": _quant_linear,
    "prune_sparsity": _prune_sparsity,
    "prune_mask": _prune_mask,
    "compress": _compress,
}


def run(module, inputs: dict, harness) -> dict:
    """One case."""
    kind = inputs["kind"]
    if kind not in CASES:
        raise ValueError(f"unknown case kind {kind!r}")
    return CASES[kind](module, inputs, harness)

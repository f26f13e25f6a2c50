"""Grader for the ``quantization`` lab: fixed-point quantization, QuantLinear, L1 pruning, compression.

Trust split (lab contract v2, docs/authoring-labs.md): ``cases`` and ``check`` run in the worker
and hold the reference answers, the pretrained float model's accuracy and the held-out digits
test split, images and labels; ``run.py`` runs in the sandbox, which sees the training split only.

The compression metric is never taken from the sandbox: ``run.py`` describes the compressed model
layer by layer (float weights, bit widths), and ``check`` quantizes those weights with the
reference quantizer, rebuilds the forward pass, measures accuracy on the test images and counts
the bits itself, after the student's process has finished. The logits the student's model
computed in the sandbox, on check images (training images and random pixels, never test images),
are only compared with that rebuilt forward pass, so a model that does not do what its widths say
is caught.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from labs.trusted import CheckFailed, assert_close, digits_split, field, single_thread

DIGITS_TEST_SIZE = 450
DIGITS_SALT = 11  # keeps this lab's split of the digits (seed + 11) as it always was
# compress()'s model runs in the sandbox on these, never on the test images (which stay here)
CHECK_TRAIN_IMAGES, CHECK_RANDOM_IMAGES, CHECK_SALT = 256, 256, 101
HIDDEN = 64  # the float model handed to compress(): Linear(64, HIDDEN) -> ReLU -> Linear(HIDDEN, 10)
# 100 full-batch Adam steps at lr 0.02 give 0.95-0.98 held-out accuracy over seeds 0-7 (measured
# single-threaded in about 0.3 s); more steps did not help.
PRETRAIN_STEPS, PRETRAIN_LR = 100, 0.02
ACCURACY_MARGIN = 0.02  # the compressed model may lose at most 2 points against the float model
FLOAT_BITS = 32  # a plain nn.Linear stores float32 weights
MAX_WIDTH = 32
MAX_FRAC_WIDTH = 64
LOADER_BATCH = 64
# Sparsity must be within half a percentage point of the target in every layer; the smallest test
# layer has 264 weights, so rounding k up or down (1/264 = 0.38%) is always within it.
SPARSITY_TOLERANCE = 0.005
PRUNE_SHAPES = [(40, 48), (24, 40), (11, 24)]  # (out, in) of the pruned MLP's layers
MASK_SHAPES = [(40, 48), (11, 40)]
MASK_STEPS = 5
# A correct re-forward differs from the sandbox's only by float summation order; allow that, and a
# rare activation that rounds the other way at a tie of the input quantizer (1% of the rows).
LOGIT_ATOL, LOGIT_RTOL, LOGIT_BAD_ROWS = 1e-3, 1e-4, 0.01
WIDTH_NAMES = (
    "weight_width",
    "weight_frac_width",
    "input_width",
    "input_frac_width",
    "bias_width",
    "bias_frac_width",
)
DEFAULT_WIDTHS = {
    "weight_width": 8,
    "weight_frac_width": 6,
    "input_width": 8,
    "input_frac_width": 4,
    "bias_width": 8,
    "bias_frac_width": 6,
}


# --------------------------------------------------------------------------------------------
# trusted references
# --------------------------------------------------------------------------------------------


def quantize_reference(x: torch.Tensor, width: int, frac_width: int) -> torch.Tensor:
    """clamp(round(x * 2^f), -2^(w-1), 2^(w-1) - 1) / 2^f, rounding half to even, in x's dtype."""
    scale = 2.0**frac_width
    low, high = -(2.0 ** (width - 1)), 2.0 ** (width - 1) - 1
    return torch.clamp(torch.round(x * scale), low, high) / scale


def effective_bits(layers: list[dict], original_weights: int) -> tuple[float, list[str]]:
    """Bits of every stored nonzero weight, per weight of the original float model.

    A QuantLinear costs ``weight_width`` bits per nonzero quantized weight, a plain nn.Linear
    32 bits per nonzero weight; zeros (pruned, or rounded to zero) cost nothing.
    """
    total, notes = 0, []
    for index, layer in enumerate(layers):
        if layer["kind"] != "linear":
            continue
        weight = layer["effective_weight"]
        nonzero = int(torch.count_nonzero(weight))
        bits = layer["widths"]["weight_width"] if layer["quantized"] else FLOAT_BITS
        total += bits * nonzero
        notes.append(f"layer {index}: {bits}-bit, {nonzero / weight.numel():.1%} nonzero")
    return total / original_weights, notes


# --------------------------------------------------------------------------------------------
# cases: trusted, from the job's secret seed
# --------------------------------------------------------------------------------------------


def _uniform(gen: torch.Generator, shape, low: float, high: float, dtype=torch.float32) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low).to(dtype)


def _round_values(gen: torch.Generator, width: int, frac: int, n: int) -> torch.Tensor:
    """Values whose scaled form lies strictly inside the symmetric range: ties, grid points, random."""
    inner = 2 ** (width - 1) - 2
    k = torch.randint(-inner, inner + 1, (n,), generator=gen).to(torch.float64)
    kind = torch.randint(0, 4, (n,), generator=gen)
    offset = torch.where(kind == 0, 0.5, torch.where(kind == 1, -0.5, 0.0))
    random = torch.rand(n, generator=gen, dtype=torch.float64) - 0.5
    offset = torch.where(kind >= 3, random, offset)
    return ((k + offset) / 2.0**frac).to(torch.float32)


def _clamp_values(gen: torch.Generator, width: int, frac: int, n: int, dtype) -> torch.Tensor:
    """Grid points including both ends of the range, and values beyond it on either side."""
    low, high = -(2 ** (width - 1)), 2 ** (width - 1) - 1
    grid = torch.randint(low, high + 1, (n // 2,), generator=gen).to(torch.float64)
    grid[:2] = torch.tensor([float(low), float(high)])
    span = float(high - low + 1)
    outside = _uniform(gen, (n - n // 2,), 0.5, 20.0 * span, torch.float64)
    sign = torch.where(torch.rand(outside.shape, generator=gen) < 0.5, -1.0, 1.0)
    beyond = torch.where(sign > 0, high + outside, low - outside)
    beyond[:4] = torch.tensor([high + 0.5, low - 0.5, 1e6, -1e6])
    values = torch.cat([grid, beyond])[torch.randperm(n, generator=gen)]
    return (values / 2.0**frac).to(dtype)


def _linear_weights(gen: torch.Generator, shapes: list[tuple[int, int]]) -> list[dict]:
    out = []
    for rows, cols in shapes:
        bound = 1.0 / math.sqrt(cols)
        out.append(
            {
                "weight": _uniform(gen, (rows, cols), -bound, bound),
                "bias": _uniform(gen, (rows,), -bound, bound),
            }
        )
    return out


def _check_images(seed: int, x_train: torch.Tensor) -> torch.Tensor:
    """The images compress()'s model is run on in the sandbox, to compare with the rebuilt forward
    pass: training images and random pixel images (multiples of 1/16, as the digits' are). Drawn
    from their own generator, so the other cases' inputs stay what they were."""
    gen = torch.Generator().manual_seed(seed + CHECK_SALT)
    train = x_train[torch.randperm(len(x_train), generator=gen)[:CHECK_TRAIN_IMAGES]]
    noise = torch.randint(0, 17, (CHECK_RANDOM_IMAGES, 64), generator=gen).to(torch.float32) / 16.0
    return torch.cat([train, noise])[torch.randperm(CHECK_TRAIN_IMAGES + CHECK_RANDOM_IMAGES, generator=gen)]


def _pretrain(gen: torch.Generator, x: torch.Tensor, y: torch.Tensor) -> nn.Sequential:
    """The float model compress() starts from, trained here so its accuracy is known and trusted."""
    layers = _linear_weights(gen, [(HIDDEN, 64), (10, HIDDEN)])
    model = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))
    with torch.no_grad():
        for linear, values in zip((model[0], model[2]), layers, strict=True):
            linear.weight.copy_(values["weight"])
            linear.bias.copy_(values["bias"])
    with single_thread():
        _adam(model, x, y, steps=PRETRAIN_STEPS, lr=PRETRAIN_LR)
    return model


def _adam(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float) -> None:
    """Full-batch torch.optim.Adam (betas 0.9, 0.999, eps 1e-8), written out: a torch optimizer's
    first step imports torch._dynamo, several seconds of CPU time in every grading process."""
    weights = list(model.parameters())
    first = [torch.zeros_like(p) for p in weights]
    second = [torch.zeros_like(p) for p in weights]
    for step in range(1, steps + 1):
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), weights)
        with torch.no_grad():
            for p, g, m, v in zip(weights, grads, first, second, strict=True):
                m.mul_(0.9).add_(g, alpha=0.1)
                v.mul_(0.999).addcmul_(g, g, value=0.001)
                p.addcdiv_(m, (v.sqrt() / math.sqrt(1 - 0.999**step)).add_(1e-8), value=-lr / (1 - 0.9**step))


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).double().mean().item()


def _quantize_cases(gen: torch.Generator) -> list[dict]:
    """quantize_fixed on its own: values inside the range (a quarter of them ties), values at and
    beyond both ends of it, and the straight-through gradient."""
    round_pairs = [(3, 1), (4, 2), (5, 0), (6, 7), (8, 4), (8, 8), (12, 6), (16, 10)]
    calls = []
    for i, (width, frac) in enumerate(round_pairs):
        x = _round_values(gen, width, frac, 400)
        calls.append({"x": x.reshape(20, 20) if i % 3 == 0 else x, "width": width, "frac_width": frac})
    out = [{"name": "quantize_round", "points": 15, "inputs": {"kind": "quantize", "calls": calls}}]

    clamp_specs = [
        (1, 0, torch.float32),
        (2, 1, torch.float32),
        (4, 2, torch.float32),
        (4, 0, torch.float32),
        (7, 3, torch.float32),
        (8, 6, torch.float64),
        (10, 12, torch.float32),
        (16, 8, torch.float32),
    ]
    calls = []
    for i, (width, frac, dtype) in enumerate(clamp_specs):
        x = _clamp_values(gen, width, frac, 240, dtype)
        calls.append({"x": x.reshape(4, 6, 10) if i % 4 == 1 else x, "width": width, "frac_width": frac})
    out.append({"name": "quantize_clamp", "points": 15, "inputs": {"kind": "quantize", "calls": calls}})

    width, frac = int(torch.randint(3, 9, (1,), generator=gen)), int(torch.randint(1, 5, (1,), generator=gen))
    x = torch.cat([_clamp_values(gen, width, frac, 150, torch.float32), _round_values(gen, width, frac, 150)])
    grad_output = torch.randn(3, 100, generator=gen)
    out.append(
        {
            "name": "ste_gradient",
            "points": 10,
            "inputs": {
                "kind": "ste",
                "x": x.reshape(3, 100),
                "width": width,
                "frac_width": frac,
                "grad_output": grad_output,
            },
        }
    )
    return out


def _quant_linear_case(gen: torch.Generator) -> dict:
    in_f, out_f = 13, 7
    widths = {
        "weight_width": int(torch.randint(4, 9, (1,), generator=gen)),
        "weight_frac_width": int(torch.randint(3, 7, (1,), generator=gen)),
        "input_width": int(torch.randint(5, 9, (1,), generator=gen)),
        "input_frac_width": int(torch.randint(2, 5, (1,), generator=gen)),
        "bias_width": int(torch.randint(4, 9, (1,), generator=gen)),
        "bias_frac_width": int(torch.randint(3, 7, (1,), generator=gen)),
    }
    input_range = 2.0 ** (widths["input_width"] - 1 - widths["input_frac_width"])
    layer = _linear_weights(gen, [(out_f, in_f)])[0]
    return {
        "name": "quant_linear",
        "points": 15,
        "inputs": {
            "kind": "quant_linear",
            "in_features": in_f,
            "out_features": out_f,
            "widths": widths,
            "weight": layer["weight"] * 3.0,  # some weights beyond the range, to be clamped
            "bias": layer["bias"],
            "x": _uniform(gen, (6, in_f), -1.3 * input_range, 1.3 * input_range),
            "grad_output": torch.randn(6, out_f, generator=gen),
        },
    }


def _prune_cases(gen: torch.Generator) -> list[dict]:
    first = [0.2, 0.3, 0.4][int(torch.randint(0, 3, (1,), generator=gen))]
    second = [0.6, 0.75, 0.9][int(torch.randint(0, 3, (1,), generator=gen))]
    sparsity_case = {
        "name": "prune_sparsity",
        "points": 15,
        "inputs": {
            "kind": "prune_sparsity",
            "layers": _linear_weights(gen, PRUNE_SHAPES),
            "sparsities": [first, second],
        },
    }
    mask_case = {
        "name": "prune_mask_kept",
        "points": 15,
        "inputs": {
            "kind": "prune_mask",
            "layers": _linear_weights(gen, MASK_SHAPES),
            "sparsity": [0.5, 0.6, 0.7][int(torch.randint(0, 3, (1,), generator=gen))],
            "x": torch.randn(64, MASK_SHAPES[0][1], generator=gen),
            "y": torch.randint(0, MASK_SHAPES[-1][0], (64,), generator=gen),
            "steps": MASK_STEPS,
        },
    }
    return [sparsity_case, mask_case]


def _compress_case(seed: int, gen: torch.Generator) -> dict:
    """The metric case: the float model trained here; the test split stays in the case, out of ``inputs``."""
    x_train, y_train, x_test, y_test = digits_split(seed, test_size=DIGITS_TEST_SIZE, salt=DIGITS_SALT)
    model = _pretrain(gen, x_train, y_train)
    with torch.no_grad():
        float_accuracy = _accuracy(model(x_test), y_test)
    return {
        "name": "compress_digits",
        "points": 15,
        "inputs": {
            "kind": "compress",
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "hidden": HIDDEN,
            "x_train": x_train,
            "y_train": y_train,
            "x_check": _check_images(seed, x_train),
            "batch_size": LOADER_BATCH,
            "seed": int(torch.randint(0, 2**31 - 1, (1,), generator=gen)),
        },
        "x_test": x_test,
        "y_test": y_test,
        "float_accuracy": float_accuracy,
        "original_weights": sum(v.numel() for k, v in model.state_dict().items() if k.endswith("weight")),
    }


def cases(seed: int) -> list[dict]:
    """Every hidden test, generated from the secret seed so inputs cannot be memorised."""
    gen = torch.Generator().manual_seed(seed)
    out = _quantize_cases(gen)
    out.append(_quant_linear_case(gen))
    out += _prune_cases(gen)
    out.append(_compress_case(seed, gen))
    return out


# --------------------------------------------------------------------------------------------
# check: trusted, compares run()'s output with the references
# --------------------------------------------------------------------------------------------


def _tensor(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckFailed(f"{what}: expected a tensor, got {type(value).__name__}")
    return value


def _diagnose_quantize(x: torch.Tensor, actual: torch.Tensor, expected: torch.Tensor, width: int, frac: int) -> str:
    """Name the likely mistake behind the wrong values, with one example of it."""
    scale = 2.0**frac
    low, high = -(2 ** (width - 1)), 2 ** (width - 1) - 1
    scaled = x.double() * scale
    got, want = actual.double() * scale, expected.double() * scale
    wrong = actual != expected
    categories = [
        (
            wrong & (got != torch.round(got)),
            f"not on the grid: the result must be exactly an integer divided by 2^{frac}",
        ),
        (
            wrong & ((got < low) | (got > high)),
            f"the result is outside the signed {width}-bit range [{low}, {high}]: clamp the integer to "
            "[-2^(width-1), 2^(width-1) - 1]",
        ),
        (
            wrong & ((want == low) | (want == high)),
            f"the expected integer is an end of the signed {width}-bit range [{low}, {high}], and both ends are "
            "representable: clamp to [-2^(width-1), 2^(width-1) - 1], not to a symmetric or narrower range",
        ),
    ]
    ties = wrong & (scaled - torch.floor(scaled) == 0.5)
    if bool(wrong.any()) and torch.equal(ties, wrong):
        categories.append((ties, "exactly halfway between two steps: round half to even, as torch.round does"))
    elif bool(wrong.any()) and bool((got[wrong] == want[wrong] - 1).all()):
        categories.append(
            (wrong, "one step (1 LSB) low: are you flooring or truncating instead of rounding to nearest?")
        )
    elif bool(wrong.any()) and bool((got[wrong] == want[wrong] + 1).all()):
        categories.append((wrong, "one step (1 LSB) high: are you using ceil instead of rounding to nearest?"))
    categories.append((wrong, "not clamp(round(x * 2^f)) / 2^f"))
    for mask, explanation in categories:
        if bool(mask.any()):
            index = tuple(int(i) for i in mask.nonzero()[0])
            return (
                f"For example at index {index}: x = {x[index].item()!r} (x * 2^{frac} = {scaled[index].item():g}), "
                f"got {actual[index].item()!r}, expected {expected[index].item()!r}: {explanation}"
            )
    return ""


def _compare_quantized(actual, x: torch.Tensor, width: int, frac: int, what: str) -> None:
    expected = quantize_reference(x, width, frac)
    actual = _tensor(actual, what)
    if actual.shape != expected.shape:
        raise CheckFailed(f"{what}: output shape {tuple(actual.shape)}, expected {tuple(expected.shape)} (x's shape)")
    if actual.dtype != expected.dtype:
        raise CheckFailed(f"{what}: output dtype {actual.dtype}, expected {expected.dtype} (x's dtype)")
    wrong = actual != expected
    if not bool(wrong.any()):
        return
    low, high = -(2 ** (width - 1)), 2 ** (width - 1) - 1
    raise CheckFailed(
        f"{what}: {int(wrong.sum())} of {x.numel()} values differ from clamp(round(x * 2^{frac}), {low}, {high}) "
        f"/ 2^{frac} (bit-exact comparison). " + _diagnose_quantize(x, actual, expected, width, frac)
    )


def _check_quantize(case: dict, output) -> None:
    outputs = field(output, "outputs")
    calls = case["inputs"]["calls"]
    if not isinstance(outputs, list) or len(outputs) != len(calls):
        raise CheckFailed("run() returned a malformed list of quantize_fixed outputs")
    for call, actual in zip(calls, outputs, strict=True):
        width, frac = call["width"], call["frac_width"]
        what = f"quantize_fixed(x, width={width}, frac_width={frac}) on a {call['x'].dtype} tensor"
        _compare_quantized(actual, call["x"], width, frac, what)


def _check_ste(case: dict, output) -> None:
    inputs = case["inputs"]
    width, frac = inputs["width"], inputs["frac_width"]
    what = f"quantize_fixed(x, width={width}, frac_width={frac}) with x.requires_grad=True"
    _compare_quantized(field(output, "out"), inputs["x"], width, frac, what)
    if not field(output, "has_grad_fn"):
        raise CheckFailed(
            f"{what}: the output has no grad_fn, so no gradient reaches x; build it from x with a "
            "straight-through estimator (see the README)"
        )
    grad = field(output, "grad")
    if grad is None:
        raise CheckFailed(f"{what}: x.grad is None after backward; the output is not connected to x")
    grad, expected = _tensor(grad, "x.grad"), inputs["grad_output"]
    if grad.shape != expected.shape:
        raise CheckFailed(f"{what}: x.grad has shape {tuple(grad.shape)}, expected {tuple(expected.shape)}")
    if torch.equal(grad, expected):
        return
    if not bool(grad.any()):
        raise CheckFailed(
            f"{what}: x.grad is zero everywhere. torch.round has a zero derivative; quantize_fixed must use a "
            "straight-through estimator that passes grad_output through unchanged"
        )
    outside = quantize_reference(inputs["x"], width, frac) != torch.round(inputs["x"] * 2.0**frac) / 2.0**frac
    if torch.equal(grad[~outside], expected[~outside]) and not bool(grad[outside].any()):
        raise CheckFailed(
            f"{what}: x.grad is zero where x is clamped. This lab's straight-through estimator passes the "
            "gradient through unchanged everywhere, clamped values included (README, 'Semantics')"
        )
    assert_close(grad, expected, what=f"{what}: x.grad (should equal grad_output exactly)", rtol=0.0, atol=0.0)


def _check_widths(values, expected: dict, label: str) -> None:
    if not isinstance(values, dict):
        raise CheckFailed(f"{label}: width attributes are malformed")
    for name, want in expected.items():
        if values.get(name) != want:
            raise CheckFailed(f"{label}: attribute {name} is {values.get(name)!r}, expected {want}")


def _check_quant_linear(case: dict, output) -> None:
    inputs = case["inputs"]
    widths, in_f, out_f = inputs["widths"], inputs["in_features"], inputs["out_features"]
    label = f"QuantLinear({in_f}, {out_f}, " + ", ".join(f"{k}={v}" for k, v in widths.items()) + ")"
    if not field(output, "is_linear"):
        raise CheckFailed(f"{label} is not an nn.Linear: subclass nn.Linear (prune_l1 and compress rely on it)")
    _check_widths(field(output, "attributes"), widths, label)
    _check_widths(field(output, "defaults"), DEFAULT_WIDTHS, "QuantLinear(3, 2) with default widths")

    def q(t, prefix):
        return quantize_reference(t, widths[f"{prefix}_width"], widths[f"{prefix}_frac_width"])

    qx, qw, qb = q(inputs["x"], "input"), q(inputs["weight"], "weight"), q(inputs["bias"], "bias")
    g = inputs["grad_output"]
    expected = {
        "out": F.linear(qx, qw, qb),
        "grad_x": g @ qw,  # straight through the input quantizer
        "grad_weight": g.t() @ qx,  # straight through the weight quantizer
        "grad_bias": g.sum(0),
    }
    hints = {
        "out": "output: quantize the input, weight and bias, each with its own widths, then F.linear",
        "grad_x": "grad of x",
        "grad_weight": "grad of weight (through the straight-through weight quantizer)",
        "grad_bias": "grad of bias",
    }
    part = field(output, "with_bias")
    for key, reference in expected.items():
        actual = field(part, key)
        if actual is None:
            raise CheckFailed(f"{label}: {hints[key]} is None after backward")
        assert_close(actual, reference, what=f"{label}: {hints[key]}", rtol=1e-5, atol=1e-5)
    if field(output, "no_bias_attr") not in ("NoneType", "str"):
        raise CheckFailed(f"QuantLinear(..., bias=False): self.bias is {output['no_bias_attr']}, expected None")
    actual = field(field(output, "no_bias"), "out")
    assert_close(actual, F.linear(qx, qw), what=f"{label} with bias=False: output", rtol=1e-5, atol=1e-5)


def _check_prune_stage(stage, layers: list[dict], sparsity: float, label: str) -> None:
    weights, biases = field(stage, "weights"), field(stage, "biases")
    if not isinstance(weights, list) or len(weights) != len(layers):
        raise CheckFailed(f"{label}: the model should still have {len(layers)} nn.Linear layers")
    for index, (actual, original, bias) in enumerate(zip(weights, layers, biases, strict=True)):
        where = f"{label}, layer {index} (nn.Linear({original['weight'].shape[1]}, {original['weight'].shape[0]}))"
        actual = _tensor(actual, f"{where}: weight")
        if actual.shape != original["weight"].shape:
            raise CheckFailed(
                f"{where}: weight shape {tuple(actual.shape)}, expected {tuple(original['weight'].shape)}"
            )
        pruned = actual == 0
        share = pruned.double().mean().item()
        if abs(share - sparsity) > SPARSITY_TOLERANCE:
            raise CheckFailed(
                f"{where}: {share:.2%} of the weights are zero, expected {sparsity:.0%} +- {SPARSITY_TOLERANCE:.1%}; "
                "prune_l1 zeroes that fraction of every nn.Linear's weight separately (per layer, not globally)"
            )
        kept = ~pruned
        if not torch.equal(actual[kept], original["weight"][kept]):
            raise CheckFailed(f"{where}: weights that were not pruned changed; prune_l1 must only zero weights")
        magnitude = original["weight"].abs()
        if bool(pruned.any()) and bool(kept.any()) and magnitude[pruned].max() > magnitude[kept].min():
            raise CheckFailed(
                f"{where}: a weight with |w| = {magnitude[pruned].max().item():.4g} was pruned while one with "
                f"|w| = {magnitude[kept].min().item():.4g} was kept; prune the smallest magnitudes |w| (L1)"
            )
        if bias is None or not torch.equal(_tensor(bias, f"{where}: bias"), original["bias"]):
            raise CheckFailed(f"{where}: the bias changed; prune only weights, never biases")


def _check_prune_sparsity(case: dict, output) -> None:
    inputs = case["inputs"]
    stages = field(output, "stages")
    if not isinstance(stages, list) or len(stages) != len(inputs["sparsities"]):
        raise CheckFailed("run() returned a malformed list of pruning stages")
    previous = None
    for stage, sparsity in zip(stages, inputs["sparsities"], strict=True):
        label = f"prune_l1(model, {sparsity})" + ("" if previous is None else f" after prune_l1(model, {previous})")
        _check_prune_stage(stage, inputs["layers"], sparsity, label)
        previous = sparsity


def _check_prune_mask(case: dict, output) -> None:
    inputs = case["inputs"]
    before, after = field(output, "before"), field(output, "after")
    steps = inputs["steps"]
    for index, original in enumerate(inputs["layers"]):
        where = f"layer {index} (nn.Linear({original['weight'].shape[1]}, {original['weight'].shape[0]}))"
        w0 = _tensor(field(before, "weights")[index], f"{where}: weight after prune_l1")
        w1 = _tensor(field(after, "weights")[index], f"{where}: weight after training")
        if w0.shape != original["weight"].shape or w1.shape != w0.shape:
            raise CheckFailed(f"{where}: the weight's shape changed")
        pruned = w0 == 0
        if pruned.double().mean().item() < inputs["sparsity"] / 2:
            raise CheckFailed(
                f"{where}: only {pruned.double().mean().item():.1%} zeros after prune_l1(model, {inputs['sparsity']}); "
                "see prune_sparsity"
            )
        revived = int((w1[pruned] != 0).sum())
        if revived:
            raise CheckFailed(
                f"{where}: {revived} of {int(pruned.sum())} pruned weights are nonzero again after {steps} SGD steps "
                "(momentum 0.9, weight decay 1e-3) and a forward pass; keep the mask: re-apply it before every "
                "forward (a forward pre-hook), mask the gradient, or reparametrize weight = weight_orig * mask"
            )
        kept = ~pruned
        moved = (w1[kept] != w0[kept]).double().mean().item() if bool(kept.any()) else 1.0
        if moved < 0.5:
            raise CheckFailed(
                f"{where}: only {moved:.0%} of the kept weights changed in {steps} SGD steps; pruning must leave the "
                "other weights trainable (are they frozen, or not in model.parameters()?)"
            )


def _check_layer_widths(widths, index: int) -> dict:
    if not isinstance(widths, dict):
        raise CheckFailed(f"compressed model, layer {index}: malformed width attributes")
    for name in WIDTH_NAMES:
        value = widths.get(name)
        if not isinstance(value, int):
            raise CheckFailed(
                f"compressed model, layer {index} (QuantLinear): {name} is {value!r}; widths must be Python ints"
            )
        if name.endswith("frac_width"):
            if not -MAX_FRAC_WIDTH <= value <= MAX_FRAC_WIDTH:
                raise CheckFailed(
                    f"compressed model, layer {index} (QuantLinear): {name} = {value}, must be within "
                    f"+-{MAX_FRAC_WIDTH}"
                )
        elif not 1 <= value <= MAX_WIDTH:
            raise CheckFailed(
                f"compressed model, layer {index} (QuantLinear): {name} = {value}, must be 1..{MAX_WIDTH}"
            )
    return widths


def _rebuild(layers, x: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
    """The compressed model's forward pass, from its description, with the reference quantizer."""
    if not isinstance(layers, list) or not layers:
        raise CheckFailed("compress() returned an empty model")
    h, features, described = x, x.shape[1], []
    for index, layer in enumerate(layers):
        kind = field(layer, "kind", f"layer {index}")
        if kind == "relu":
            h = torch.relu(h)
            described.append({"kind": "relu"})
            continue
        weight = _tensor(field(layer, "weight", f"layer {index}"), f"layer {index}: weight").to(torch.float32)
        bias = field(layer, "bias", f"layer {index}")
        if weight.dim() != 2 or weight.shape[1] != features:
            raise CheckFailed(
                f"compressed model, layer {index}: weight shape {tuple(weight.shape)} does not take {features} inputs"
            )
        if bias is not None:
            bias = _tensor(bias, f"layer {index}: bias").to(torch.float32)
            if bias.shape != (weight.shape[0],):
                raise CheckFailed(f"compressed model, layer {index}: bias shape {tuple(bias.shape)}")
        if not (torch.isfinite(weight).all() and (bias is None or torch.isfinite(bias).all())):
            raise CheckFailed(f"compressed model, layer {index}: non-finite weights")
        quantized = bool(field(layer, "quantized", f"layer {index}"))
        entry = {"kind": "linear", "quantized": quantized}
        if quantized:
            widths = entry["widths"] = _check_layer_widths(field(layer, "widths", f"layer {index}"), index)
            weight = quantize_reference(weight, widths["weight_width"], widths["weight_frac_width"])
            h = quantize_reference(h, widths["input_width"], widths["input_frac_width"])
            if bias is not None:
                bias = quantize_reference(bias, widths["bias_width"], widths["bias_frac_width"])
        entry["effective_weight"] = weight
        described.append(entry)
        h = F.linear(h, weight, bias)
        features = weight.shape[0]
    if features != 10:
        raise CheckFailed(f"the compressed model outputs {features} values per input, expected 10 logits")
    return h, described


def _check_compress(case: dict, output) -> dict:
    """The compressed model's logits on the check images must match its rebuilt forward pass; the
    rebuilt model alone is then scored here on the test images, which never entered the sandbox."""
    x_check = case["inputs"]["x_check"]
    logits = _tensor(field(output, "logits"), "the compressed model's logits")
    if logits.shape != (len(x_check), 10):
        raise CheckFailed(
            f"the compressed model's output has shape {tuple(logits.shape)}, expected ({len(x_check)}, 10)"
        )
    layers = field(output, "layers")
    rebuilt, _ = _rebuild(layers, x_check)
    far = (logits.to(torch.float32) - rebuilt).abs() > LOGIT_ATOL + LOGIT_RTOL * rebuilt.abs()
    bad_rows = int(far.any(dim=1).sum())
    if bad_rows > LOGIT_BAD_ROWS * len(x_check):
        raise CheckFailed(
            f"the compressed model's logits differ from the forward pass the grader rebuilt from its layers on "
            f"{bad_rows} of {len(x_check)} check images: each QuantLinear must compute F.linear(q(x), q(weight), "
            "q(bias)) with its own width attributes (which are what the bits are counted from), and plain "
            "nn.Linear / nn.ReLU layers must be unmodified"
        )
    test_logits, described = _rebuild(layers, case["x_test"])
    accuracy = _accuracy(test_logits, case["y_test"])
    threshold = case["float_accuracy"] - ACCURACY_MARGIN
    bits, notes = effective_bits(described, case["original_weights"])
    summary = f"effective bits {bits:.3f} ({'; '.join(notes)}), held-out accuracy {accuracy:.3f}"
    if accuracy < threshold:
        raise CheckFailed(
            f"{summary}: below the threshold {threshold:.3f} (the float model's {case['float_accuracy']:.3f} minus "
            f"{ACCURACY_MARGIN}), so the effective bits are not counted. Compress less (wider weights, lower "
            "sparsity) or fine-tune with the quantizers and masks in place"
        )
    return {"metric": bits, "message": f"{summary}, threshold {threshold:.3f}"}


def check(case: dict, output) -> dict | None:
    """Compare one case's output with the trusted references; raise CheckFailed saying what is wrong."""
    kind = case["inputs"]["kind"]
    if kind == "quantize":
        _check_quantize(case, output)
    elif kind == "ste":
        _check_ste(case, output)
    elif kind == "quant_linear":
        _check_quant_linear(case, output)
    elif kind == "prune_sparsity":
        _check_prune_sparsity(case, output)
    elif kind == "prune_mask":
        _check_prune_mask(case, output)
    elif kind == "compress":
        return _check_compress(case, output)
    else:
        raise CheckFailed(f"internal grader error: unknown case kind {kind!r}")
    return None

"""The sandbox side of grad_compression: the student's 3LC codec, one rank's part of its allreduce,
and one rank's part of the training run of the metric.

Shipped into the sandbox as a file (lab contract v2) and imported before the student's module.
``run`` runs one case and returns plain data. The codec cases run in the job's one process. The
distributed cases (``"world_size"`` in the case) run on every rank at once, each rank a process in
a sandbox of its own, all in one gloo group the harness has joined already
(``gpu_runner.rankgroup``): here ``run`` does this rank's part, on this rank's own inputs, and
returns this rank's results. Errors in the student's code propagate and fail the case with their
own type and message; the worker names the rank that raised, died or hung. Nothing here decides a
grade: ``grader.py`` checks every result in the worker, and evaluates the trained weights on a
held-out split that never enters a sandbox.

The ranks share nothing but a private loopback network, whose bytes the worker counts (the metric
and the allreduce's byte limit come from that count). The collectives are refused in every rank
(``labs.sandboxed.refuse_collectives``), and each rank also counts the bytes it passes to
``ProcessGroup.send`` (``labs.sandboxed.count_sent_bytes``): a hint for the messages of the checks,
never a figure that is ranked.
"""

from __future__ import annotations

import traceback

import torch
import torch.nn.functional as F

from labs import sandboxed


def run(module, inputs: dict, harness):
    """One case: the codec's stages, or this rank's part of the allreduce or of the training run."""
    kind = inputs["kind"]
    if kind == "codec":
        return _codec(module, inputs)
    if kind == "allreduce":
        return _allreduce(module, inputs, harness)
    if kind == "train":
        return _train(module, inputs, harness)
    raise ValueError(f"unknown case kind {kind!r}")


def _need(module, name: str):
    if not hasattr(module, name):
        raise AttributeError(f"compression.py defines no {name}; the README lists the names to implement")
    return getattr(module, name)


def _tensor_out(value, what: str) -> torch.Tensor:
    return sandboxed.plain(value, what).clone()


# --------------------------------------------------------------------------------------------
# the codec: each stage's calls, an error in one coming back as data
# --------------------------------------------------------------------------------------------


def _compress(compressor, t: torch.Tensor) -> dict:
    result = compressor.compress(t.clone())
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise TypeError(f"ThreeLC.compress returned {type(result).__name__}, expected a (payload, meta) pair")
    payload, meta = result
    payload = _tensor_out(payload, "ThreeLC.compress (the payload)")
    if not isinstance(meta, dict) or "shape" not in meta or "scale" not in meta:
        raise TypeError("ThreeLC.compress must return meta as a dict with keys 'shape' and 'scale'")
    meta = {"shape": [int(d) for d in meta["shape"]], "scale": float(meta["scale"])}
    residual = getattr(compressor, "residual", None)
    residual = _tensor_out(residual, "ThreeLC.residual") if residual is not None else None
    return {"payload": payload, "meta": meta, "residual": residual}


def _decompress(module, s: float, payload: torch.Tensor, meta: dict) -> torch.Tensor:
    """A fresh compressor, the payload and only the documented meta: what a receiving rank has."""
    fresh = _need(module, "ThreeLC")(s)
    meta = {"shape": list(meta["shape"]), "scale": meta["scale"]}
    return _tensor_out(fresh.decompress(payload.clone(), meta), "ThreeLC.decompress")


class _Stages:
    """The lossless stages and the compressor, each stage's calls run together; ``calling`` names
    the call in progress for an error's message."""

    def __init__(self, module, inputs: dict):
        self.module, self.inputs, self.calling = module, inputs, ""

    def section(self, key: str) -> list | dict:
        """One stage's results; an error comes back as data, so that the other stages are still checked."""
        try:
            return getattr(self, key)()
        except Exception as exc:
            if type(exc).__name__ == "ForbiddenCall":
                raise
            frames = traceback.format_tb(exc.__traceback__)
            frames = [f for f in frames if "run.py" not in f and "sandboxed.py" not in f][-2:] or frames[-1:]
            return {"error": f"{type(exc).__name__}: {exc}", "call": self.calling, "where": "".join(frames)}

    def each(self, name: str, items: list) -> list:
        """``name(*item)`` for every item, as tensors."""
        function, out = _need(self.module, name), []
        for item in items:
            args = item if isinstance(item, list) else [item]
            self.calling = f"{name} on input {len(out) + 1} of {len(items)} ({args[0].numel()} values)"
            out.append(_tensor_out(function(*args), name))
        return out

    def pack(self) -> list:
        return self.each("pack_base3", self.inputs["pack"])

    def unpack(self) -> list:
        return self.each("unpack_base3", [[p, int(n)] for p, n in self.inputs["unpack"]])

    def encode(self) -> list:
        return self.each("zero_run_encode", self.inputs["encode"])

    def decode(self) -> list:
        return self.each("zero_run_decode", self.inputs["decode"])

    def roundtrip(self) -> list:
        return self.each("zero_run_decode", self.each("zero_run_encode", self.inputs["roundtrip"]))

    def compress(self) -> list:
        sequences = []
        for seq in self.inputs["compress"]:
            compressor = _need(self.module, "ThreeLC")(seq["s"])
            before = getattr(compressor, "residual", None)
            steps = []
            for k, t in enumerate(seq["tensors"]):
                self.calling = f"ThreeLC({seq['s']}), call {k + 1}: compress(t) with t of shape {tuple(t.shape)}"
                step = _compress(compressor, t)
                self.calling = f"decompress(payload, meta) of that call's payload, meta {step['meta']}"
                step["decompressed"] = _decompress(self.module, seq["s"], step["payload"], step["meta"])
                steps.append(step)
            before = before if isinstance(before, torch.Tensor) else None
            sequences.append({"residual_before": before, "steps": steps})
        return sequences


def _codec(module, inputs: dict) -> dict:
    stages = _Stages(module, inputs)
    keys = ("pack", "unpack", "encode", "decode", "roundtrip", "compress")
    return {key: stages.section(key) for key in keys if key in inputs}


# --------------------------------------------------------------------------------------------
# the distributed cases
# --------------------------------------------------------------------------------------------


def _allreduce(module, inputs: dict, harness) -> list:
    """This rank's part of a compressed_allreduce test: each call's result, residual and the bytes it
    passed to send (a hint; the worker counts what crossed the network)."""
    sandboxed.refuse_collectives(harness)
    sent = sandboxed.count_sent_bytes()
    allreduce, make = _need(module, "compressed_allreduce"), _need(module, "ThreeLC")
    compressors, calls = {}, []
    for call in inputs["calls"]:
        name = call["tensor"]
        if name not in compressors:
            compressors[name] = make(inputs["s"])
        t = call["values"].clone()
        before = sent.count
        returned = allreduce(t, compressors[name])
        residual = getattr(compressors[name], "residual", None)
        calls.append(
            {
                "result": t.detach().clone(),
                "returned": returned.detach().clone() if isinstance(returned, torch.Tensor) else None,
                "residual": residual.detach().clone() if isinstance(residual, torch.Tensor) else None,
                "bytes": sent.count - before,
            }
        )
    return calls


def _train(module, inputs: dict, harness) -> dict:
    """This rank's part of the training run: full-batch gradients of its own shard, one bucket per
    step through ``compressed_allreduce``, plain SGD. Returns the trained weights, the sparsity
    multiplier used and the bytes this rank passed to send (a hint)."""
    sandboxed.refuse_collectives(harness)
    sent = sandboxed.count_sent_bytes()
    allreduce, make = _need(module, "compressed_allreduce"), _need(module, "ThreeLC")
    s = getattr(module, "SPARSITY_MULTIPLIER", 1.0)
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not 1.0 <= s < 2.0:
        raise ValueError(f"SPARSITY_MULTIPLIER must be a number in [1, 2), got {s!r}")
    before = sent.count
    params = [p.clone().requires_grad_() for p in inputs["init"]]
    compressor = make(float(s))  # one bucket, as DDP does: the flat gradient of all parameters
    x, y = inputs["x"], inputs["y"]
    for _ in range(inputs["steps"]):
        w1, b1, w2, b2 = params
        logits = torch.relu(x @ w1.t() + b1) @ w2.t() + b2
        grads = torch.autograd.grad(F.cross_entropy(logits, y), params)
        bucket = torch.cat([g.reshape(-1) for g in grads])
        allreduce(bucket, compressor)
        with torch.no_grad():
            for p, g in zip(params, bucket.split([p.numel() for p in params]), strict=True):
                p -= inputs["lr"] * g.reshape(p.shape)
    return {
        "sparsity_multiplier": float(s),
        "params": [p.detach().clone() for p in params],
        "bytes": sent.count - before,
    }

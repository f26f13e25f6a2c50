"""The sandbox side of grad_compression: the student's 3LC codec, its allreduce on forked gloo ranks,
and the training run of the metric.

Shipped into the sandbox as a file (lab contract v2) and imported before the student's module.
``run`` runs one case and returns plain data. Errors in the student's code propagate and fail the
case with their own type and message; a rank that raises, dies or hangs fails it with
``labs.ranks``' message naming the rank. Nothing here decides a grade: ``grader.py`` checks every
result in the worker, and evaluates the trained weights on a held-out split that never enters the
sandbox.

The bytes each rank sends are counted here, in the rank, at ``ProcessGroup.send``
(``labs.sandboxed.count_sent_bytes``), and the collectives are refused there: a count the ranks
could go around through what they share (``/dev/shm``, files, pipes), until issue 11 moves it out.
"""

from __future__ import annotations

import re
import traceback

import torch
import torch.nn.functional as F

from labs import ranks, sandboxed

HANG = re.compile(r"did not finish in time|Timed out waiting")
# The test in which a rank hung: every later spawn would wait out its timeout too, so they are
# skipped. (The submission could clear this, only to wait longer.)
_hung: list[str] = []


def run(module, inputs: dict, harness):
    """One case: the codec's stages, the allreduce on 2 to 4 ranks, or the training run."""
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


def _spawn(fn, world: int, args: tuple, inputs: dict, harness):
    if _hung:
        raise RuntimeError(f"not run: a rank hung in test '{_hung[0]}'; fix that hang first")
    sandboxed.collective_targets()  # resolved once here (~20 ms), not in every forked rank
    try:
        return ranks.spawn(
            fn, world, args=args, timeout=inputs["timeout"], collective_timeout=inputs["collective_timeout"]
        )
    except ranks.RankFailed as exc:
        name = sandboxed.forbidden_in(exc)
        if name:
            raise harness.forbidden(name) from None
        if HANG.search(str(exc)):
            _hung.append(inputs["test"])
            raise RuntimeError(
                "A rank waited for a message that never came (a hang): e.g. every rank calls a blocking "
                "recv before its send, or the ranks disagree on how many messages to exchange. Post the "
                f"receives with irecv and the sends with isend, then wait for all of them.\n{exc}"
            ) from None
        raise


def _allreduce_rank(rank: int, world: int, module, group: dict, harness) -> list:
    """One rank of a compressed_allreduce test: each call's result, residual and bytes sent."""
    sandboxed.refuse_collectives(harness)
    sent = sandboxed.count_sent_bytes()
    allreduce, make = _need(module, "compressed_allreduce"), _need(module, "ThreeLC")
    compressors, calls = {}, []
    for call in group["calls"]:
        name = call["tensor"]
        if name not in compressors:
            compressors[name] = make(group["s"])
        t = call["values"][rank].clone()
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


def _allreduce(module, inputs: dict, harness) -> list:
    for name in ("compressed_allreduce", "ThreeLC"):
        _need(module, name)
    return [
        {
            "world_size": g["world_size"],
            "ranks": _spawn(_allreduce_rank, g["world_size"], (module, g, harness), inputs, harness),
        }
        for g in inputs["groups"]
    ]


def _train_rank(rank: int, world: int, module, inputs: dict, s: float, harness) -> dict:
    """One rank of the training run: full-batch gradients of its shard, one bucket per step through
    ``compressed_allreduce``, plain SGD. Returns the trained weights and the bytes it sent."""
    sandboxed.refuse_collectives(harness)
    sent = sandboxed.count_sent_bytes()
    allreduce = _need(module, "compressed_allreduce")
    params = [p.clone().requires_grad_() for p in inputs["init"]]
    compressor = _need(module, "ThreeLC")(s)  # one bucket, as DDP does: the flat gradient of all parameters
    x, y = inputs["x_shards"][rank], inputs["y_shards"][rank]
    for _ in range(inputs["steps"]):
        w1, b1, w2, b2 = params
        logits = torch.relu(x @ w1.t() + b1) @ w2.t() + b2
        grads = torch.autograd.grad(F.cross_entropy(logits, y), params)
        bucket = torch.cat([g.reshape(-1) for g in grads])
        allreduce(bucket, compressor)
        with torch.no_grad():
            for p, g in zip(params, bucket.split([p.numel() for p in params]), strict=True):
                p -= inputs["lr"] * g.reshape(p.shape)
    return {"params": [p.detach().clone() for p in params], "bytes": sent.count}


def _train(module, inputs: dict, harness) -> dict:
    for name in ("compressed_allreduce", "ThreeLC"):
        _need(module, name)
    s = getattr(module, "SPARSITY_MULTIPLIER", 1.0)
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not 1.0 <= s < 2.0:
        raise ValueError(f"SPARSITY_MULTIPLIER must be a number in [1, 2), got {s!r}")
    # A gate, not a clock: the worker answers "skip" once any earlier test has failed, so the
    # training only counts (and costs its 4 ranks' time) for a compressor that passed everything else.
    try:
        harness.begin("train")
    except Exception as exc:
        if type(exc).__name__ == "NotTimed":
            raise RuntimeError(
                "not run: the training run starts only once every other test passes; fix those first"
            ) from None
        raise
    ranks_out = _spawn(_train_rank, inputs["world_size"], (module, inputs, float(s), harness), inputs, harness)
    return {"sparsity_multiplier": float(s), "ranks": ranks_out}

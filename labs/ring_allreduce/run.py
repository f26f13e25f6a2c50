"""The sandbox side of ring_allreduce: one rank's part of a case, in that rank's own sandbox.

Shipped into the sandbox as a file (lab contract v2) and imported before the student's module.
The worker runs each case on its ranks, each in a sandbox of its own that shares only a metered
loopback network with its peers, and the process group already joined (``gpu_runner.rankgroup``).
``run`` refuses the process group's own collectives in this rank, then calls the student's function
on this rank's own tensors, test after test, counting the bytes this rank hands to ``send`` (a hint
for the message when one rank sends too much; the worker counts what crossed the network itself).
``timed`` runs one timed call of the benchmark on this rank. Nothing here decides a grade:
``grader.py`` checks every result in the worker, and the worker times the benchmark.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from labs import sandboxed


def run(module, inputs: dict, harness) -> dict:
    """One correctness case on this rank: every test in ``inputs["tests"]``, this rank's results."""
    sandboxed.refuse_collectives(harness)
    sent = sandboxed.count_sent_bytes()
    results = []
    for test in inputs["tests"]:
        dist.barrier()  # one test's messages never mix with the next one's, nor its byte count
        before = sent.count
        try:
            result = _call_student(module, test["op"], test["tensor"].clone())
        except BaseException as exc:
            exc.add_note(f"(in test: {test['what']})")
            raise
        result["bytes"] = sent.count - before
        results.append(result)
    return {"tests": results}


def timed(module, inputs: dict, harness) -> dict:
    """One timed call on this rank: ``ring_allreduce`` on this rank's own tensor ``x``.

    The reference group runs this very function on ``reference.py`` (gloo's ``all_reduce``): both
    sides pay the same overhead.
    """
    if sandboxed.forbids(harness, "torch.distributed.all_reduce"):  # the student's ranks, not gloo's
        sandboxed.refuse_collectives(harness)
    t = inputs["x"].clone()
    module.ring_allreduce(t)
    return {"out": t}


def _call_student(module, op: str, tensor: torch.Tensor) -> dict:
    """Call one of the student's functions; say what it returned, as plain data."""
    if op == "allreduce":
        returned = module.ring_allreduce(tensor)
        result = {"value": tensor.detach().clone()}
        if returned is None or returned is tensor:
            result["returned"] = "t" if returned is tensor else "None"
        elif isinstance(returned, torch.Tensor):
            result["returned"], result["returned_value"] = "another tensor", returned.detach().clone()
        else:
            result["returned"] = type(returned).__name__
        return result
    function = module.ring_reduce_scatter if op == "reduce_scatter" else module.ring_allgather
    returned = function(tensor)
    if isinstance(returned, torch.Tensor):
        return {"value": returned.detach().clone()}
    return {"value": None, "returned": type(returned).__name__}

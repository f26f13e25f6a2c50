"""The sandbox side of ring_allreduce: the student's collectives on forked gloo ranks.

Shipped into the sandbox as a file (lab contract v2) and imported before the student's module.
``run`` runs one correctness case: for each group of ranks it spawns (``labs.ranks``), every rank
refuses the process group's own collectives, counts the bytes it sends, flips the signs of its
inputs in secret and calls the student's function on them, test after test. ``timed`` runs one
timed call of the benchmark on one rank of the worker's pool. Nothing here decides a grade:
``grader.py`` checks every result in the worker, and the worker times the benchmark.
"""

from __future__ import annotations

import mmap
import os

import torch
import torch.distributed as dist

from labs import ranks, sandboxed

HANG_HINT = (
    "\n(with gloo, dist.send returns only once the receiver has posted the matching recv: if every rank "
    "sends before it receives, nobody receives. Post the send with dist.isend, then recv, then wait on "
    "the send; and check that every recv has a matching send of the same length)"
)
ABORT_HINT = (
    "\n(gloo aborts a process whose recv gets a different number of bytes than the matching send "
    "sent: see the job output for 'Received data size doesn't match'; do sender and receiver agree "
    "on every chunk's length?)"
)
# The case whose ranks hung: every later spawn would wait out its timeout too, so they are skipped.
# (The submission could clear this, only to wait longer.)
_hung: list[str] = []


def run(module, inputs: dict, harness) -> dict:
    """One correctness case: every group of ranks in ``inputs["runs"]``, each rank's results."""
    if _hung:
        raise RuntimeError(f"not run: test '{_hung[0]}' did not finish in time (a hang); fix that first")
    sandboxed.collective_targets()  # resolved once here (~20 ms), not in every forked rank
    return {"runs": [_spawn_tests(module, spec, inputs, harness) for spec in inputs["runs"]]}


def timed(module, inputs: dict, harness) -> dict:
    """One timed call on one rank: ``ring_allreduce`` on this rank's row of ``x``, rotated by a
    shift only this rank knows (reported as ``shift`` for the worker), so that a rank cannot add
    up its peers' rows from the call's inputs instead of receiving them.

    The reference process runs this very function on ``reference.py`` (gloo's ``all_reduce``):
    both sides pay the same rotation and the same overhead.
    """
    if sandboxed.forbids(harness, "torch.distributed.all_reduce"):  # the student's ranks, not gloo's
        sandboxed.refuse_collectives(harness)
    shift = int.from_bytes(os.urandom(7), "little") % inputs["x"].shape[1]
    t = torch.roll(inputs["x"][inputs["rank"]], shift)  # a fresh tensor, this rank's own
    module.ring_allreduce(t)
    return {"out": t, "shift": torch.tensor([float(shift)], dtype=torch.float64)}


def _spawn_tests(module, spec: dict, inputs: dict, harness) -> list:
    world_size = spec["world_size"]
    # Anonymous and shared across fork: each rank writes the number of the test it is in.
    progress = mmap.mmap(-1, 2 * world_size)
    timeout = float(inputs["timeout"])
    try:
        # gloo's own timeout is longer, so that the spawn's deadline names a hang first.
        return ranks.spawn(
            _on_rank,
            world_size,
            args=(module, spec["tests"], progress, harness),
            timeout=timeout,
            collective_timeout=timeout + 10,
        )
    except ranks.RankFailed as exc:
        raise _explained(exc, spec, progress, inputs["label"], harness) from None


def _on_rank(rank: int, world_size: int, module, tests: list, progress, harness) -> dict:
    """One rank: refuse the group's collectives, count sent bytes, then every test in turn."""
    sandboxed.refuse_collectives(harness)
    sent = sandboxed.count_sent_bytes()
    seed, mine = _private([test["tensors"][rank] for test in tests])
    results = []
    for index, test in enumerate(tests):
        progress[2 * rank : 2 * rank + 2] = (index + 1).to_bytes(2, "little")  # for a hang's message
        dist.barrier()  # one test's messages never mix with the next one's, nor its byte count
        before = sent.count
        try:
            result = _call_student(module, test["op"], mine[index])
        except BaseException as exc:
            exc.add_note(f"(in test: {test['what']})")
            raise
        result["bytes"] = sent.count - before
        results.append(result)
    return {"seed": seed, "tests": results}


def _private(tensors: list) -> tuple[int, list]:
    """This rank's own inputs: random sign flips only this process knows (grader._rank_inputs
    rebuilds them from the seed), so peers' tensors, also in this forked memory, are no use."""
    seed = int.from_bytes(os.urandom(7), "little")
    gen = torch.Generator().manual_seed(seed)
    signed = []
    for tensor in tensors:
        signs = (torch.randint(0, 2, tensor.shape, generator=gen) * 2 - 1).to(tensor.dtype)
        signed.append(tensor * signs)
    return seed, signed


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


def _explained(exc: ranks.RankFailed, spec: dict, progress, label: str, harness) -> BaseException:
    """A rank's failure as the student should see it: a forbidden call as one (reason
    ``forbidden_call``), otherwise which tests the ranks were in, with a hint for a hang or an abort."""
    name = sandboxed.forbidden_in(exc)
    if name:
        return harness.forbidden(name)
    text = str(exc)
    reached = {int.from_bytes(progress[2 * r : 2 * r + 2], "little") for r in range(spec["world_size"])}
    names = [spec["tests"][i - 1]["what"] for i in sorted(reached) if i > 0]
    if names:
        text += "\n(the ranks were in: " + "; ".join(names) + ")"
    if "did not finish in time" in text:
        _hung.append(label)
        text += HANG_HINT
    if "SIGABRT" in text:
        text += ABORT_HINT
    return ranks.RankFailed(text, failures=exc.failures)

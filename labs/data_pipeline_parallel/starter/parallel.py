"""Data and pipeline parallelism lab: bucketed DDP and a GPipe step, on a gloo process group.

Implement ``MyDDP`` and ``gpipe_step`` below; README.md has the exact contract. The grader starts
2 to 4 ranks that have already called ``dist.init_process_group("gloo", ...)``, so
``dist.get_rank()`` and ``dist.get_world_size()`` work from the start.

Allowed: ``dist.broadcast``, ``dist.all_reduce`` (one call per bucket), ``dist.send``/``recv``/
``isend``/``irecv``, ``dist.barrier``. Forbidden (they raise during grading): PyTorch's
``DistributedDataParallel`` and its bucketing helpers, and ``torch.distributed.pipelining``.
Call collectives as ``dist.all_reduce(...)``: the grader counts the calls through the module.
"""

from __future__ import annotations

import torch  # noqa: F401 - you will need these
import torch.distributed as dist  # noqa: F401
import torch.nn.functional as F  # noqa: F401
from torch import nn


class MyDDP(nn.Module):
    """Wraps ``module`` so that ``loss.backward()`` leaves in every ``p.grad`` the average of that
    gradient over all ranks.

    - At construction: broadcast every parameter (and buffer) of ``module`` from rank 0, in place.
    - Group the parameters that require grad into buckets of at most ``bucket_cap_mb`` MiB (the
      rule is in README.md) and register a gradient hook on each parameter.
    - During backward: when the last gradient of a bucket arrives, all-reduce the whole bucket
      with one ``dist.all_reduce`` call; by the time backward returns, each ``p.grad`` holds the
      sum over ranks divided by the world size.
    """

    def __init__(self, module: nn.Module, bucket_cap_mb: float = 25) -> None:
        super().__init__()
        self.module = module
        raise NotImplementedError(
            "implement MyDDP.__init__: broadcast rank 0's parameters, build the buckets, register gradient hooks"
        )

    def forward(self, *args, **kwargs):
        """Return ``self.module(*args, **kwargs)``."""
        raise NotImplementedError("implement MyDDP.forward: call the wrapped module")


def gpipe_step(stage: nn.Module, microbatches: list, rank: int, world: int) -> float | None:
    """One GPipe training step of the pipeline's ``stage`` owned by this rank (rank r runs stage r).

    ``microbatches`` is a list of ``m`` pairs ``(x, y)``: ``x`` is the microbatch's input on rank 0
    (``None`` elsewhere), ``y`` its target on the last rank (``None`` elsewhere).

    Run the forward of every microbatch (receive the activation from rank - 1, apply ``stage``,
    send the output to rank + 1), then the backward of every microbatch (the last rank starts from
    ``F.mse_loss(output, y) / m``; the others receive the gradient of their output from rank + 1
    and send the gradient of their input to rank - 1). Leave the gradients in the stage's
    ``p.grad`` (accumulated over microbatches) and return the loss (a float, the mean of the
    microbatches' MSE) on the last rank, ``None`` on the others.
    """
    raise NotImplementedError(
        "implement gpipe_step: forward all microbatches with dist.send/recv, then backward them in reverse"
    )

"""gloo's own all-reduce behind the student's interface, for the timed case.

The worker imports this file in a clean sandbox (no student code, nothing patched), forks a pool of
4 ranks from it and runs the lab's ``run.timed`` on them call by call, interleaved with the
student's calls: the reference side of the per-pair ratio is ``torch.distributed.all_reduce``
(gloo's), timed exactly like the student's ``ring_allreduce``. Only ``ring_allreduce`` is timed.
"""

import torch
import torch.distributed as dist


def ring_allreduce(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks in place, with gloo's all-reduce."""
    dist.all_reduce(t)
    return t

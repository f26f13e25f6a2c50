"""The ideal of the pipeline benchmark behind the student's interface: ``gpipe_step`` as each stage's
own compute for every microbatch, with no messages.

The worker imports this file in 2 clean sandboxes of its own (one per rank: no student code, nothing
patched) and runs the lab's ``run.timed`` on them call by call, interleaved with the student's
calls. A call ends when the slower stage has run the forward and backward of all ``m``
microbatches: the compute a GPipe step cannot avoid. The grader multiplies it by the bubble,
``(m + p - 1) / m``, for the ideal step of step / ideal.

A stage that is not the first gets no input from the microbatches (it would receive it), and a
stage that is not the last gets no gradient of its output: stand-ins of the right shape, drawn once,
take their place. The benchmark's stages have the same widths at both ends, and its two ranks get
the inputs (rank 0) and the targets (rank 1), so every stage knows the microbatches' rows.
"""

import torch
import torch.nn.functional as F
from torch import nn

_stand_ins: dict = {}


def _stand_in(rank: int, rows: int, features: int, index: int) -> torch.Tensor:
    key = (rank, rows, features, index)
    if key not in _stand_ins:
        gen = torch.Generator().manual_seed(1000 * rank + index)
        _stand_ins[key] = torch.randn(rows, features, generator=gen, dtype=torch.float64)
    return _stand_ins[key]


def gpipe_step(stage: nn.Module, microbatches: list, rank: int, world: int) -> float | None:
    """Forward and backward of ``stage`` for every microbatch, one after the other, no messages."""
    first, last = rank == 0, rank == world - 1
    m = len(microbatches)
    rows = next(t.shape[0] for pair in microbatches for t in pair if t is not None)
    in_features = next(layer for layer in stage.modules() if isinstance(layer, nn.Linear)).in_features
    total = 0.0
    for i, (x, y) in enumerate(microbatches):
        inp = x if first else _stand_in(rank, rows, in_features, i).clone().requires_grad_()
        out = stage(inp)
        if last:
            loss = F.mse_loss(out, y) / m
            total += loss.item()
            loss.backward()
        else:
            out.backward(_stand_in(rank, rows, out.shape[1], m + i))
    return total if last else None

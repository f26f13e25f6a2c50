"""The library's implementation of the student's interface, for the timed case.

The worker imports this file in a clean sandbox (no student code, nothing patched) and runs the
lab's ``run.timed`` on it call by call, interleaved with the student's calls: the reference side of
the per-pair ratio is torch's own forward + backward of ``F.linear``, timed exactly like the
student's operator.
"""

import torch.nn.functional as F
from torch import nn


class MyLinearFunction:
    """``MyLinearFunction.apply(x, weight, bias=None)`` is ``F.linear``, with torch's autograd."""

    apply = staticmethod(F.linear)


class MyLinear(nn.Linear):
    """``nn.Linear`` itself: same parameters, initialisation and forward."""

"""Modules that follow ``module.train()`` / ``module.eval()`` inside a captured graph: dropout and batch norm.

``torch.export`` bakes the training flag of the export into ``aten.dropout`` / ``aten.batch_norm`` as a constant;
the ``make_mode_aware`` pass (:mod:`mixq_compile.passes.train_mode`) replaces those nodes by these modules, and every
backend translates them (in inference they are the identity and a fixed affine map).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ModeDropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)


class ModeBatchNorm(nn.Module):
    """Batch norm over tensors passed in as arguments (the graph owns weight, bias and running statistics)."""

    def __init__(self, momentum: float, eps: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.eps = eps

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}, eps={self.eps}"

    def forward(self, x: Tensor, weight, bias, running_mean, running_var) -> Tensor:
        use_batch_stats = self.training or running_mean is None
        return F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, self.momentum, self.eps)

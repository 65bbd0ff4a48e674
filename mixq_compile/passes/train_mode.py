"""Pass: make dropout and batch norm follow ``module.train()`` / ``module.eval()`` again.

Pre-condition: an exported graph, where ``aten.dropout`` and ``aten.batch_norm`` carry the training flag of the
export as a constant. Post-condition: those nodes are ``call_module`` nodes of :class:`ModeDropout` and
:class:`ModeBatchNorm`, which read ``self.training``; batch-norm running statistics are the graph's own buffers
(updated in place during training, as ``nn.BatchNorm`` does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

aten = torch.ops.aten


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


def _replace_with_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, args: tuple) -> None:
    name = f"mode_{node.name}"
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, args)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def make_mode_aware(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite dropout and batch-norm nodes into mode-aware modules (see module docstring)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in (aten.dropout.default, aten.feature_dropout.default):
            p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
            _replace_with_module(gm, node, ModeDropout(float(p)), (node.args[0],))
        elif node.target == aten.batch_norm.default:
            x, weight, bias, mean, var = node.args[:5]
            momentum = node.args[6] if len(node.args) > 6 else 0.1
            eps = node.args[7] if len(node.args) > 7 else 1e-5
            _replace_with_module(gm, node, ModeBatchNorm(float(momentum), float(eps)), (x, weight, bias, mean, var))
    gm.graph.lint()
    gm.recompile()
    return gm

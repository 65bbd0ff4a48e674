"""Pass: make dropout and batch norm follow ``module.train()`` / ``module.eval()`` again.

Pre-condition: an exported graph, where ``aten.dropout`` and ``aten.batch_norm`` carry the training flag of the
export as a constant. Post-condition: those nodes are ``call_module`` nodes of :class:`ModeDropout` and
:class:`ModeBatchNorm`, which read ``self.training``; batch-norm running statistics are the graph's own buffers
(updated in place during training, as ``nn.BatchNorm`` does).
"""

from __future__ import annotations

import torch
from torch import fx, nn

from ..ir.modes import ModeBatchNorm, ModeDropout

aten = torch.ops.aten


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

"""Pass: fuse each ``quantize -> linear_int`` pair into one ``mixq::quantize_linear`` call (torch backend).

Precondition: an integer program (``GraphModule`` over :mod:`mixq_compile.ir.instructions`). Postcondition: every
``quantize`` whose only user is a ``linear_int`` reading it with the same zero-point is gone, together with that
``linear_int``; a ``mixq::quantize_linear`` node computes the same int32 accumulator (it skips zero features, see
:mod:`mixq_compile.ops.input_linear`). Other nodes are untouched. In a GCN this is the input layer: node
features -> codes -> first weight.
"""

from __future__ import annotations

import torch
from torch import fx

from ..graph_copy import quiet_deepcopy
from ..ir import instructions as K
from .node_fusion import fuse_pair


def _fusable(node: fx.Node) -> fx.Node | None:
    """The ``linear_int`` that is the only reader of this ``quantize`` node's codes, if any."""
    if node.op != "call_function" or node.target is not K.quantize or len(node.users) != 1:
        return None
    (user,) = node.users
    if user.op != "call_function" or user.target is not K.linear_int:
        return None
    codes, x_zero = user.args[0], user.args[1]
    return user if codes is node and x_zero is node.args[2] else None


def fuse_input_linear(features: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """A copy of ``features`` with every fusable pair fused, and how many pairs were fused."""
    gm = quiet_deepcopy(features)
    fused = 0
    for node in list(gm.graph.nodes):
        linear = _fusable(node)
        if linear is None:
            continue
        x, scale, zero, qmin, qmax = node.args
        _, _, w_t, w_sum, bias = linear.args
        args = (x, scale, zero, qmin, qmax, w_t, w_sum, bias)
        fuse_pair(gm, node, linear, torch.ops.mixq.quantize_linear.default, args)
        fused += 1
    gm.graph.lint()
    gm.recompile()
    return gm, fused

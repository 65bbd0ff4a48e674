"""The torch backend's converters of integer instructions: which instructions run as ``mixq::`` operators (the
CPU's exact kernels, chosen when the artifact runs) instead of their ATen reference form. Float ops need none: the
program is torch already."""

from __future__ import annotations

import torch

from ...graph_copy import quiet_deepcopy
from ...ir import instructions as K

#: instruction -> ``mixq::`` operator, in every torch program
INTEGER_OPS = {K.linear_int: torch.ops.mixq.linear_int.default}
#: instruction -> ``mixq::`` operator, in programs run op by op (AOTInductor fuses these element-wise chains itself)
OP_BY_OP_OPS = {K.quantize: torch.ops.mixq.quantize.default, K.requantize: torch.ops.mixq.requantize.default}


def dispatching_ops(features: torch.fx.GraphModule, op_by_op: bool) -> torch.fx.GraphModule:
    """``features`` with every ``linear_int`` instruction computed by ``mixq::linear_int`` (the CPU's exact
    kernel, chosen when the artifact runs, not when it is exported) and, for programs run ``op_by_op``, every
    ``quantize`` / ``requantize`` by ``mixq::quantize`` / ``mixq::requantize`` (one pass, same codes; AOTInductor
    fuses the element-wise chains on its own)."""
    targets = {**INTEGER_OPS, **(OP_BY_OP_OPS if op_by_op else {})}
    gm = quiet_deepcopy(features)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in targets:
            node.target = targets[node.target]
    gm.recompile()
    return gm

"""Pass: put every quantized linear's bias on its int32 accumulator grid (``s_x * s_w``).

Integer inference adds the bias to the int32 accumulator of ``(q_x - z_x) @ q_w^T``, so the bias it can represent
is ``round(b / (s_x s_w)) * s_x s_w``. Modelling that in the fixed-precision graph makes QAT train what will be
deployed and lets the integer program match the fake-quant model within one output step.

Pre-condition: fixed quantizers (:func:`freeze_quantizers`) and the site plan. Post-condition: the bias argument of
every ``aten.linear`` whose input and weight are both quantized (per-tensor input grid) is
``bias_fake_quantize(bias, s_x, s_w)``, reading the two quantizers' scales. Idempotent.
"""

from __future__ import annotations

import torch
from torch import fx

from ..ir.meta import PLAN_KEY, QUANTIZER_ROOT
from ..ir.plan import SitePlan
from ..quant.functional import bias_fake_quantize

aten = torch.ops.aten


def quantize_bias(gm: fx.GraphModule) -> fx.GraphModule:
    """Fake-quantize linear biases onto their accumulator grids (see module docstring)."""
    plan: SitePlan = gm.meta[PLAN_KEY]
    nodes = {n.name: n for n in gm.graph.nodes}
    quantizers = getattr(gm, QUANTIZER_ROOT)
    for op in plan.ops:
        node = nodes.get(op.node)
        if node is None or node.target != aten.linear.default or len(node.args) < 3:
            continue
        bias = node.args[2]
        if not isinstance(bias, fx.Node) or bias.target is bias_fake_quantize:
            continue
        x_site, w_site = op.operand_grids[:2]
        if x_site is None or w_site is None:
            continue
        x_key, w_key = (plan.site(s).module_key for s in (x_site, w_site))
        if quantizers[x_key].scale.numel() != 1:
            continue
        with gm.graph.inserting_before(node):
            x_scale = gm.graph.get_attr(f"{QUANTIZER_ROOT}.{x_key}.scale")
            w_scale = gm.graph.get_attr(f"{QUANTIZER_ROOT}.{w_key}.scale")
            quantized = gm.graph.call_function(bias_fake_quantize, (bias, x_scale, w_scale))
        node.replace_input_with(bias, quantized)
    gm.graph.lint()
    gm.recompile()
    return gm

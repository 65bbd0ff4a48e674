"""Pass: fold ``relu_codes`` into the requantize that produced its codes (torch backend).

``relu_codes(q, z) = max(q, z)`` on codes ``q = clamp(v, qmin, qmax)`` equals ``clamp(v, max(qmin, z), qmax)`` for
``z <= qmax``: the ReLU is the requantize's lower clamp raised to the zero-point. With the zero-point a per-tensor
constant, the rewrite is exact and removes a pass over a ``[rows, C]`` code tensor (a GCN's hidden layer: 1M x 256
codes, ~90 ms single-threaded).

Precondition: a feature program after :func:`~mixq_compile.lowering.fuse_requantize.fuse_requantize`.
Postcondition: every ``relu_codes`` whose input is the only use of a requantize (the instruction, ``mixq::requantize``
or an op with a requantize epilogue) clamping with the same per-tensor zero-point is gone, and that requantize
clamps from ``max(qmin, z)``. Other nodes are untouched.
"""

from __future__ import annotations

import torch
from torch import fx

from ..graph_copy import quiet_deepcopy
from ..ir import instructions as K
from .code_ranges import CLAMPED_AT, code_range
from .constants import constant


def _constant(gm: fx.GraphModule, node: object) -> int | None:
    """The integer value of a per-tensor constant (a ``get_attr`` of one element), else None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value = constant(gm, node.target)
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.is_floating_point():
        return None
    return int(value)


def fold_relu(features: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """A copy of ``features`` with every foldable ``relu_codes`` folded, and how many were."""
    gm = quiet_deepcopy(features)
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not K.relu_codes:
            continue
        codes, zero = node.args
        at = CLAMPED_AT.get(codes.target) if isinstance(codes, fx.Node) and codes.op == "call_function" else None
        if at is None or len(codes.users) != 1:
            continue
        out_zero = codes.args[at - 1]  # every clamping op takes its zero-point just before qmin
        z = _constant(gm, zero)
        if z is None or z != _constant(gm, out_zero):
            continue
        bounds = code_range(codes)
        if bounds is None or not bounds[0] <= z <= bounds[1]:
            continue
        qmin = bounds[0]
        args = list(codes.args)
        args[at] = max(qmin, z)
        codes.args = tuple(args)
        node.replace_all_uses_with(codes)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.recompile()
    return gm, folded

"""Sum aggregations of gathered messages over structure-given edges: find them, and sort their edges by target.

A feature program aggregates messages as ``out[dst[e]] += w[e] * (H[src[e]] - zero)`` with ``dst``/``src``/``w``
coming from the structure program (the frontier). Backends that have a sparse-matrix (CSR) kernel replace that
gather -> center -> multiply -> scatter chain by one row-sum over edges sorted by target: the analysis here finds the
chains (:func:`find_aggregations`), and :func:`sorted_structure` adds the sorted edges to the structure program,
which runs once per graph and is cached with the rest of the topology preprocessing.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import Tensor, fx

from ..graph_copy import quiet_deepcopy
from ..ir import instructions as K
from ..passes.split_structure import remove_dead_code

aten = torch.ops.aten

SCATTER_ADDS = (aten.scatter_add.default, aten.scatter_add_.default)
ZERO_MAKERS = (aten.new_zeros.default, aten.zeros.default)


@dataclass(frozen=True)
class Aggregation:
    """``out[dst[e]] += w[e] * (H[src[e]] - zero)``: a sum aggregation of gathered messages.

    ``dst``/``src``/``weight`` are positions in the frontier (structure outputs); ``weight`` and ``zero`` (a
    ``get_attr`` node with the table's zero-point) are optional. ``extras`` is where the structure program's
    sorted copies start: ``dst``, ``src`` and, with a weight, ``weight`` sorted by target.
    """

    node: fx.Node
    table: fx.Node
    dst: int
    src: int
    weight: int | None
    zero: fx.Node | None
    extras: int = -1


def _frontier_position(node: object, frontier: dict[fx.Node, int]) -> int | None:
    return frontier.get(node) if isinstance(node, fx.Node) else None


def _message_chain(msg: object) -> list[object]:
    """``msg`` and the values it is computed from by shape-preserving steps (centering, edge-weight products):
    an ``expand_as`` of the target index against any of them has the messages' shape."""
    chain = [msg]
    while isinstance(msg, fx.Node) and msg.target in (K.center, K.mul_int, aten.mul.Tensor):
        if msg.target is K.center:
            msg = msg.args[0]
        else:  # the operand that is not the [E, 1] edge weight (a structure input)
            operands = [a for a in msg.args if isinstance(a, fx.Node) and a.op != "placeholder"]
            if len(operands) != 1:
                break
            msg = operands[0]
        chain.append(msg)
    return chain


def _target_index(node: fx.Node, frontier: dict[fx.Node, int]) -> tuple[fx.Node, int] | None:
    """``(messages, dst position)`` of a sum aggregation along dim 0 whose target index is a structure tensor."""
    target, args = node.target, node.args
    if target is K.scatter_sum_int or target in SCATTER_ADDS:
        if target in SCATTER_ADDS:
            base, dim, index, msg = args[:4]
            if not (isinstance(base, fx.Node) and base.target in ZERO_MAKERS and len(base.users) == 1):
                return None
        else:
            msg, dim, index = args[:3]
        if not (isinstance(index, fx.Node) and index.target == aten.expand_as.default):
            return None
        if index.args[1] not in _message_chain(msg):
            return None
        dst = _frontier_position(index.args[0], frontier)
    elif target is K.index_sum_int:
        msg, dim, index = args[:3]
        dst = _frontier_position(index, frontier)
    else:
        return None
    return (msg, dst) if dim == 0 and dst is not None and isinstance(msg, fx.Node) else None


def match_aggregation(node: fx.Node, frontier: dict[fx.Node, int]) -> Aggregation | None:
    """The :class:`Aggregation` computed by ``node``, or ``None`` (it then runs as a generic scatter)."""
    found = _target_index(node, frontier)
    if found is None:
        return None
    msg, dst = found
    weight = None
    if msg.target in (K.mul_int, aten.mul.Tensor) and len(msg.args) == 2:
        a, b = msg.args
        if _frontier_position(a, frontier) is not None and isinstance(b, fx.Node):
            weight, msg = frontier[a], b
        elif _frontier_position(b, frontier) is not None and isinstance(a, fx.Node):
            weight, msg = frontier[b], a
        else:
            return None
    zero = None
    if msg.target is K.center:
        msg, zero = msg.args
        if not (isinstance(zero, fx.Node) and zero.op == "get_attr" and isinstance(msg, fx.Node)):
            return None
    if msg.target != aten.index_select.default or msg.args[1] not in (0, -2):
        return None
    src = _frontier_position(msg.args[2], frontier)
    return None if src is None else Aggregation(node, msg.args[0], dst, src, weight, zero)


def find_aggregations(features: fx.GraphModule, n_inputs: int, frontier: tuple[Tensor, ...]) -> list[Aggregation]:
    """CSR-able aggregations of ``features``, checked against example frontier tensors (edge-aligned 1-D indices,
    ``[E, 1]`` weights), with ``extras`` numbered in order after the frontier."""
    placeholders = [n for n in features.graph.nodes if n.op == "placeholder"]
    positions = {node: i for i, node in enumerate(placeholders[n_inputs:])}
    found = []
    for node in features.graph.nodes:
        agg = match_aggregation(node, positions)
        if agg is None:
            continue
        dst, src = frontier[agg.dst], frontier[agg.src]
        edges = src.shape[0] if src.dim() == 1 else -1
        if dst.numel() != edges or dst.dim() > 2 or (dst.dim() == 2 and dst.shape[1] != 1):
            continue
        if agg.weight is not None:
            w = frontier[agg.weight]
            if not (w.dim() == 2 and w.shape == (edges, 1)):
                continue
        start = n_inputs + len(frontier) + sum(3 if a.weight is not None else 2 for a in found)
        found.append(Aggregation(agg.node, agg.table, agg.dst, agg.src, agg.weight, agg.zero, start))
    return found


def sorted_structure(structure: fx.GraphModule, aggregations: list[Aggregation]) -> fx.GraphModule:
    """The structure program plus, per :class:`Aggregation`, its edges sorted by target (``dst``, ``src`` and
    weight, in that order, after the frontier). Sorting runs once per graph with the rest of the topology
    preprocessing (and is cached with it), so the feature program's aggregation is a parallel row-sum with no
    atomics. Built as an fx graph of ATen ops, so that it keeps the structure program's named inputs for
    ``torch.export`` and backends that translate ATen graphs node by node (ONNX) read it as it is."""
    gm = quiet_deepcopy(structure)
    graph = gm.graph
    output = next(n for n in graph.nodes if n.op == "output")
    frontier = list(output.args[0])
    extras: list[fx.Node] = []
    with graph.inserting_before(output):
        for agg in aggregations:
            target = graph.call_function(aten.reshape.default, (frontier[agg.dst], [-1]))
            ordered = graph.call_function(aten.sort.stable, (target,), {"stable": True})
            order = graph.call_function(operator.getitem, (ordered, 1))
            sources = [target, frontier[agg.src]]
            if agg.weight is not None:
                sources.append(graph.call_function(aten.reshape.default, (frontier[agg.weight], [-1])))
            extras += [graph.call_function(aten.index.Tensor, (t, [order])) for t in sources]
    output.args = (tuple(frontier + extras),)
    graph.lint()
    gm.recompile()
    return gm


def _rows(node: fx.Node) -> object:
    """The number of output rows of an aggregation node (an int or a ``sym_size`` node)."""
    if node.target in SCATTER_ADDS:
        base = node.args[0]
        size = base.args[1] if base.target == aten.new_zeros.default else base.args[0]
    else:
        size = node.args[3]
    return size[0]


def csr_features(features: fx.GraphModule, aggregations: list[Aggregation]) -> fx.GraphModule:
    """The feature program with every aggregation in ``aggregations`` computed by ``torch.ops.mixq.csr_sum``.

    Pre: ``aggregations`` come from :func:`find_aggregations` on ``features``; the program will be fed the outputs of
    :func:`sorted_structure` (its frontier, then per aggregation the target-sorted ``dst``, ``src`` and weight).
    Post: one new placeholder per sorted tensor, appended in that order; each aggregation node is replaced by a
    ``csr_sum`` over them (same values, exactly, for integer codes) and its gather/center/multiply/scatter chain is
    removed when nothing else uses it.
    """
    gm = quiet_deepcopy(features)
    graph = gm.graph
    by_name = {node.name: node for node in graph.nodes}
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    for agg in aggregations:
        sorted_inputs = []
        for name in ("dst", "src", "weight") if agg.weight is not None else ("dst", "src"):
            with graph.inserting_after(last):
                last = graph.placeholder(f"csr_{agg.node.name}_{name}")
            sorted_inputs.append(last)
        node = by_name[agg.node.name]
        weight = sorted_inputs[2] if agg.weight is not None else None
        zero = by_name[agg.zero.name] if agg.zero is not None else None
        with graph.inserting_before(node):
            replacement = graph.call_function(
                torch.ops.mixq.csr_sum.default,
                (sorted_inputs[0], sorted_inputs[1], weight, by_name[agg.table.name], zero, _rows(node)),
            )
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
    remove_dead_code(graph)
    graph.lint()
    gm.recompile()
    return gm

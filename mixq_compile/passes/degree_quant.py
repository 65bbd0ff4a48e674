"""Pass: Degree-Quant's stochastic protection of high in-degree nodes (MIXQ_METHOD.md §5.3).

Pre-condition: quantizers inserted (:func:`~mixq_compile.passes.insert_quantizers.insert_quantizers`), an integer
``[2, E]`` placeholder (``edge_index``) and a floating-point node-feature placeholder (its dim 0 is the node count).
Post-condition: after the inputs, the graph computes per-node protection probabilities from the in-degrees of the
``edge_index`` input (:func:`~mixq_compile.quant.degree_quant.protection_probability`; structure only, so the
structure cache can keep it) and samples one node mask per forward pass (module ``dq_mask``: Bernoulli in
training, ``None`` in eval). The quantizer output of every node-level site (dim 0 = nodes) and edge-level site
(one feeding message passing) is read through ``protect(value, quantized, mask)``: node-level sites use the node
mask, edge-level sites the mask of each edge's source node (the index of the gather of ``x_j`` feeding their
aggregation). Other sites (weights, graph-level values after pooling) are unchanged.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, fx

from ..config import DegreeQuant
from ..ir.meta import PLAN_KEY
from ..ir.plan import OpRecord, Site, SitePlan
from ..ir.rules import rule_for
from ..quant.degree_quant import DegreeQuantMask, edge_mask, protect, protection_probability

aten = torch.ops.aten
MASK_MODULE = "dq_mask"
_SEARCH_DEPTH = 8


def _val(node: fx.Node):
    return node.meta.get("val")


def _edge_index_input(gm: fx.GraphModule) -> fx.Node:
    found = [
        n
        for n in gm.graph.nodes
        if n.op == "placeholder"
        and isinstance(_val(n), Tensor)
        and not _val(n).is_floating_point()
        and _val(n).dim() == 2
        and _val(n).shape[0] == 2
    ]
    if len(found) != 1:
        raise ValueError(
            f"Degree-Quant needs exactly one integer [2, E] input (edge_index) to compute in-degrees; found "
            f"{[n.name for n in found] or 'none'}"
        )
    return found[0]


def _node_feature_input(gm: fx.GraphModule) -> fx.Node:
    for n in gm.graph.nodes:
        if n.op == "placeholder" and isinstance(_val(n), Tensor) and _val(n).is_floating_point() and _val(n).dim():
            return n
    raise ValueError("Degree-Quant needs a floating-point node-feature input (its dim 0 is the number of nodes)")


def _rows(node: fx.Node) -> str | None:
    val = _val(node)
    return str(val.shape[0]) if isinstance(val, Tensor) and val.dim() else None


def _gather_index(node: fx.Node) -> fx.Node | None:
    if node.target == aten.index_select.default:
        return node.args[2]
    if node.target == aten.index.Tensor:
        return next((i for i in node.args[1] if isinstance(i, fx.Node)), None)
    return None


def _feeding_message_passing(plan: SitePlan, site: Site) -> OpRecord | None:
    """The message-passing op a site is an operand or output of, if any (edge-level sites feed one)."""
    for op in plan.ops:
        if op.category == "message_passing" and (op.edge_weight == site.name or site.name in op.owned):
            return op
    return None


def _source_index(gm: fx.GraphModule, op: OpRecord) -> fx.Node | None:
    """The per-edge source-node index of a message-passing op: the index of the nearest gather (``x_j``, PyG's
    source-to-target flow) upstream of its message."""
    aggregation = next(n for n in gm.graph.nodes if n.name == op.node)
    frontier = [aggregation.args[rule_for(aggregation.target).operands[0]]]
    for _ in range(_SEARCH_DEPTH):
        for node in frontier:
            index = _gather_index(node)
            if index is not None:
                return index
        frontier = [i for n in frontier if n.op == "call_function" for i in n.all_input_nodes]
    return None


def insert_degree_quant(gm: fx.GraphModule, dq: DegreeQuant) -> fx.GraphModule:
    """Insert Degree-Quant's protection mask and bypasses (see module docstring)."""
    plan: SitePlan = gm.meta[PLAN_KEY]
    edge_index, features = _edge_index_input(gm), _node_feature_input(gm)
    node_rows = _rows(features)
    gm.add_module(MASK_MODULE, DegreeQuantMask())
    last_input = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
    with gm.graph.inserting_after(last_input):
        num_nodes = gm.graph.call_function(aten.sym_size.int, (features, 0))
    num_nodes.meta["val"] = _val(features).shape[0]
    with gm.graph.inserting_after(num_nodes):
        probability = gm.graph.call_function(protection_probability, (edge_index, num_nodes, dq.low, dq.high))
    with gm.graph.inserting_after(probability):
        mask = gm.graph.call_module(MASK_MODULE, (probability,))
    quantized = {n.meta["mixq_site"]: n for n in gm.graph.nodes if n.op == "call_module" and "mixq_site" in n.meta}
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for site in plan.sites:
        qnode = quantized[site.name]
        rows = _rows(qnode)
        if site.kind == "weight" or rows is None or not qnode.users:
            continue
        # Before the first reader (not right after the quantizer: an input's quantizer may sit among the inputs).
        first_use = min(qnode.users, key=order.__getitem__)
        if rows == node_rows:
            site_mask = mask
        else:
            op = _feeding_message_passing(plan, site)
            if op is None:  # neither node- nor edge-level (e.g. after graph pooling): always quantized
                continue
            source = _source_index(gm, op)
            if source is None or order.get(source, len(order)) >= order[first_use]:
                warnings.warn(
                    f"Degree-Quant: no source-node index found for the edge-level site {site.name}; "
                    "it is quantized for every edge",
                    stacklevel=2,
                )
                continue
            with gm.graph.inserting_before(first_use):
                site_mask = gm.graph.call_function(edge_mask, (mask, source))
        with gm.graph.inserting_before(first_use):
            bypass = gm.graph.call_function(protect, (qnode.args[0], qnode, site_mask))
        bypass.meta = {k: v for k, v in qnode.meta.items() if k in ("val", "tensor_meta")}
        qnode.replace_all_uses_with(bypass, delete_user_cb=lambda user, b=bypass: user is not b)
    gm.graph.lint()
    gm.recompile()
    return gm

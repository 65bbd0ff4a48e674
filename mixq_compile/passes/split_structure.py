"""Pass: split a graph into its *structure* part (depends only on the graph topology) and its *feature* part.

GCN normalisation, self-loop insertion, degree counts and the quantization of the resulting edge weights depend on
``edge_index`` (and the number of nodes) but not on node features. Transductive deployments compute them once per
graph, as PyG's ``cached=True`` does, and backends that cannot compile data-dependent shapes (boolean masks in
self-loop removal) run them as preprocessing.

Pre-condition: a graph whose floating-point placeholders are the node features and whose integer placeholders
(``edge_index``, ``batch``) describe the topology.
Post-condition: ``structure(*inputs) -> frontier`` (a tuple of tensors) and ``features(*inputs, *frontier) ->
outputs``, with ``features(*inputs, *structure(*inputs)) == gm(*inputs)``. The structure program reads feature
inputs only through their shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, fx

from ..graph_copy import quiet_deepcopy
from ..ir import instructions as K
from .structure import structure_nodes

#: instructions whose output has their first operand's shape (so its sizes are that operand's sizes).
_SAME_SHAPE = (K.quantize, K.requantize, K.dequantize, K.center, K.relu_codes)
_SYM_SIZE = torch.ops.aten.sym_size.int


@dataclass
class StructureSplit:
    structure: fx.GraphModule
    features: fx.GraphModule
    frontier: tuple[str, ...]


def _frontier(gm: fx.GraphModule) -> list[fx.Node]:
    """Structure tensors read by feature computations (the values the structure program hands over); sizes are
    recomputed by the feature program from its own inputs."""
    part = structure_nodes(gm, constants=True)
    out = []
    for node in part.frontier:
        val = node.meta.get("val")
        if isinstance(val, Tensor) or (val is None and node.op == "call_function"):
            out.append(node)
    return out


def remove_dead_code(graph: fx.Graph) -> None:
    """Dead-code elimination that also drops unused in-place ops when nothing else reads the mutated tensor."""
    changed = True
    while changed:
        changed = False
        order = {node: i for i, node in enumerate(graph.nodes)}
        for node in reversed(list(graph.nodes)):
            if node.op not in ("call_function", "call_method", "call_module", "get_attr") or node.users:
                continue
            mutates = isinstance(node.target, torch._ops.OpOverload) and node.target._schema.is_mutable
            target = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
            if mutates and target is not None and any(order[u] > order[node] for u in target.users):
                continue  # the mutated tensor is read later: the mutation is observable
            graph.erase_node(node)
            changed = True


def _plain(gm: fx.GraphModule) -> fx.GraphModule:
    new = quiet_deepcopy(gm)
    new.graph._codegen = fx.graph.CodeGen()
    return new


def sizes_from_inputs(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` with every ``sym_size`` of a quantized input read from the input itself.

    ``x.size(0)`` in a model becomes ``quantize(x).size(0)`` once a quantizer sits on ``x``, which makes the node
    count, and with it PyG's self loops and GCN normalisation, look feature-dependent: they would stay in the
    feature program (uncached, and untranslatable on TVM). The size is the same, so it is read from ``x``.
    """
    gm = quiet_deepcopy(gm)
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not _SYM_SIZE:
            continue
        source = node.args[0]
        while isinstance(source, fx.Node) and source.op == "call_function" and source.target in _SAME_SHAPE:
            source = source.args[0]
        if isinstance(source, fx.Node) and source.op == "placeholder" and source is not node.args[0]:
            node.args = (source, *node.args[1:])
    gm.recompile()
    return gm


def split_structure(gm: fx.GraphModule) -> StructureSplit:
    """Split ``gm`` into structure and feature programs (see module docstring)."""
    gm = sizes_from_inputs(gm)
    names = [n.name for n in _frontier(gm)]

    structure = _plain(gm)
    by_name = {n.name: n for n in structure.graph.nodes}
    old_output = next(n for n in structure.graph.nodes if n.op == "output")
    with structure.graph.inserting_before(old_output):
        frontier = [by_name[name] for name in names]
        if not frontier:  # a model that ignores the topology (an MLP baseline): hand over one empty tensor, so
            # every backend still gets a structure program with an output (none accepts a program without one)
            frontier = [structure.graph.call_function(torch.ops.aten.zeros.default, ([0],), {"dtype": torch.int64})]
        structure.graph.output(tuple(frontier))
    structure.graph.erase_node(old_output)
    remove_dead_code(structure.graph)
    structure.graph.lint()
    structure.recompile()

    features = _plain(gm)
    by_name = {n.name: n for n in features.graph.nodes}
    last_input = [n for n in features.graph.nodes if n.op == "placeholder"][-1]
    for name in reversed(names):
        old = by_name[name]
        with features.graph.inserting_after(last_input):
            placeholder = features.graph.placeholder(f"structure_{name}")
        placeholder.meta = dict(old.meta)
        old.replace_all_uses_with(placeholder)
    if not names:
        with features.graph.inserting_after(last_input):
            features.graph.placeholder("structure_empty").meta["val"] = torch.zeros(0, dtype=torch.int64)
    remove_dead_code(features.graph)
    features.graph.lint()
    features.recompile()
    for part in (structure, features):
        used = {n.target for n in part.graph.nodes if n.op == "get_attr"}
        for name in [b for b, _ in part.named_buffers() if b not in used]:
            delattr(part, name)
    return StructureSplit(structure, features, tuple(names) or ("empty",))

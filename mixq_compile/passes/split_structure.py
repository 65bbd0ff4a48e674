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

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, fx

aten = torch.ops.aten

#: ops that read a tensor only for its shape: they do not make a node feature-dependent.
_SHAPE_OPS = {aten.sym_size.int, aten.sym_numel.default, aten.sym_stride.int}


@dataclass
class StructureSplit:
    structure: fx.GraphModule
    features: fx.GraphModule
    frontier: tuple[str, ...]


def structure_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value depends only on integer inputs, constants and input shapes."""
    structural: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if isinstance(val, Tensor) and not val.is_floating_point():
                structural.add(node)
        elif node.op == "get_attr":
            structural.add(node)
        elif node.op in ("call_function", "call_method"):
            if node.target in _SHAPE_OPS or all(n in structural for n in node.all_input_nodes):
                structural.add(node)
    return structural


def _frontier(gm: fx.GraphModule, structural: set[fx.Node]) -> list[fx.Node]:
    """Structure tensors read by feature computations (the values the structure program must hand over)."""
    out = []
    for node in gm.graph.nodes:
        if node not in structural or node.op in ("placeholder", "get_attr"):
            continue
        val = node.meta.get("val")
        is_tensor = isinstance(val, Tensor) or (val is None and node.target not in _SHAPE_OPS)
        if is_tensor and any(u not in structural for u in node.users):
            out.append(node)
    return out


def _remove_dead(graph: fx.Graph) -> None:
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
    new = copy.deepcopy(gm)
    new.graph._codegen = fx.graph.CodeGen()
    return new


def split_structure(gm: fx.GraphModule) -> StructureSplit:
    """Split ``gm`` into structure and feature programs (see module docstring)."""
    structural = structure_nodes(gm)
    frontier = _frontier(gm, structural)
    names = [n.name for n in frontier]

    structure = _plain(gm)
    by_name = {n.name: n for n in structure.graph.nodes}
    old_output = next(n for n in structure.graph.nodes if n.op == "output")
    with structure.graph.inserting_before(old_output):
        structure.graph.output(tuple(by_name[name] for name in names))
    structure.graph.erase_node(old_output)
    _remove_dead(structure.graph)
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
    _remove_dead(features.graph)
    features.graph.lint()
    features.recompile()
    for part in (structure, features):
        used = {n.target for n in part.graph.nodes if n.op == "get_attr"}
        for name in [b for b, _ in part.named_buffers() if b not in used]:
            delattr(part, name)
    return StructureSplit(structure, features, tuple(names))

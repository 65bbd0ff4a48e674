"""Graph-structure computations: find them (:func:`structure_nodes`) and compute them once per graph
(:func:`cache_structure`), like PyG's ``cached=True``.

A GNN's forward mixes two kinds of work. Feature work depends on node features and parameters and changes every
step. Structure work depends only on the graph inputs (``edge_index``, ``batch``) and sizes (the number of nodes):
adding self-loops, degrees, the GCN normalisation ``D^-1/2 (A + 2I) D^-1/2``. In full-batch training the graph is
the same on every step, so the structure work can be done once. :func:`structure_nodes` is the reusable analysis
(it can also split an exported program into a preprocessing part and a feature part);
:func:`cache_structure` is the pass that wraps the structure part into a :class:`StructureCache` module.
"""

from __future__ import annotations

import operator
from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from ..ir.structure_cache import CACHE_MODULE, StructureCache

aten = torch.ops.aten
_SIZE_OPS = frozenset({aten.sym_size.int, aten.sym_numel.default, aten.sym_stride.int})


@dataclass(frozen=True)
class StructureSubgraph:
    """The structure-only part of a graph.

    Attributes:
        nodes: every node computed from structure inputs alone (graph order), excluding the inputs themselves.
        inputs: what those nodes read from outside: structure placeholders and sizes of any placeholder
            (``sym_size`` nodes; e.g. the number of nodes read from ``x``), in graph order.
        frontier: the nodes of ``nodes`` whose values are read by the rest of the graph (feature computations,
            quantizers or the output), in graph order — the outputs of a preprocessing step.
    """

    nodes: tuple[fx.Node, ...]
    inputs: tuple[fx.Node, ...]
    frontier: tuple[fx.Node, ...]


def _is_float_placeholder(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, Tensor) and val.is_floating_point()


def _is_size_of_placeholder(node: fx.Node) -> bool:
    return (
        node.op == "call_function"
        and node.target in _SIZE_OPS
        and isinstance(node.args[0], fx.Node)
        and node.args[0].op == "placeholder"
    )


def _schema(node: fx.Node):
    return getattr(node.target, "_schema", None) if node.op == "call_function" else None


def _is_random(node: fx.Node) -> bool:
    return isinstance(node.target, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in node.target.tags


def _written_args(node: fx.Node) -> list[fx.Node]:
    """Inputs an in-place op writes to (``self`` of ``scatter_add_``, ``out=`` arguments)."""
    schema = _schema(node)
    if schema is None:
        return []
    written = []
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
        if isinstance(value, fx.Node):
            written.append(value)
    return written


def _alias_chain(node: fx.Node) -> list[fx.Node]:
    """``node`` and the tensors it is a view of (ops whose output aliases their input), up to the memory owner."""
    chain = [node]
    while (schema := _schema(node)) is not None and schema.returns and schema.returns[0].alias_info is not None:
        if not node.args or not isinstance(node.args[0], fx.Node) or _written_args(node):
            break
        node = node.args[0]
        chain.append(node)
    return chain


def structure_nodes(
    gm: fx.GraphModule, feature_inputs: Collection[str] | None = None, *, constants: bool = False
) -> StructureSubgraph:
    """The nodes of ``gm`` that depend only on graph-structure inputs, and the frontier the rest of the graph reads.

    ``feature_inputs`` names the placeholders that carry features (default: every floating-point placeholder);
    every other placeholder is structure (``edge_index``, ``batch``). A node is structure when all its inputs are
    structure nodes, structure placeholders or sizes of placeholders, and it is not a random op (dropout_edge),
    a module call (quantizers, dropout, batch norm) or a parameter read. A structure value that a feature op
    writes in place (directly or through a view) is excluded, with everything computed from it (a cached copy
    would miss the write), and so is a structure op that writes into a graph input. The graph is not modified.
    ``constants=True`` counts attribute reads as structure too (for lowered programs, whose attributes never change).
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if feature_inputs is None:
        features = {n for n in placeholders if _is_float_placeholder(n)}
    else:
        unknown = set(feature_inputs) - {n.name for n in placeholders}
        if unknown:
            raise ValueError(f"feature_inputs names no placeholder: {sorted(unknown)}")
        features = {n for n in placeholders if n.name in feature_inputs}
    sources = {n for n in placeholders if n not in features}
    sources |= {n for n in gm.graph.nodes if _is_size_of_placeholder(n)}
    if constants:  # attributes of a lowered program are immutable constants, not trained parameters
        sources |= {n for n in gm.graph.nodes if n.op == "get_attr"}
    excluded: set[fx.Node] = set()
    while True:
        inside = _propagate(gm, sources, excluded)
        clobbered = set()
        for node in gm.graph.nodes:
            for target in _written_args(node):
                chain = _alias_chain(target)
                if node not in inside:  # a feature op writes into structure memory: recompute that memory
                    clobbered |= {c for c in chain if c in inside}
                elif chain[-1] in sources:  # a structure op writes into a graph input: keep the write per call
                    clobbered.add(node)
        if not clobbered:
            break
        excluded |= clobbered
    nodes = tuple(n for n in gm.graph.nodes if n in inside)
    members = set(nodes)
    inputs = tuple(n for n in gm.graph.nodes if n in sources and any(u in members for u in n.users))
    frontier = tuple(n for n in nodes if any(u not in members for u in n.users))
    return StructureSubgraph(nodes, inputs, frontier)


def _propagate(gm: fx.GraphModule, sources: set[fx.Node], excluded: set[fx.Node]) -> set[fx.Node]:
    """Structure nodes (not sources) given the structure sources and nodes forced out of the structure part."""
    inside: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node in sources or node in excluded or _is_random(node):
            continue
        if all(i in sources or i in inside for i in node.all_input_nodes):
            inside.add(node)
    return inside


def _extract(gm: fx.GraphModule, part: StructureSubgraph) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in part.inputs:
        env[node] = graph.placeholder(node.name)
        env[node].meta = dict(node.meta)
    for node in part.nodes:
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(tuple(env[n] for n in part.frontier))
    return fx.GraphModule(nn.Module(), graph, class_name="StructureSubgraph")


def cache_structure(gm: fx.GraphModule, feature_inputs: Collection[str] | None = None) -> fx.GraphModule:
    """Compute the structure part of ``gm`` once per graph (see :class:`StructureCache` for the cache key).

    Pre-condition: any captured graph (before or after quantizer insertion; ``feature_inputs`` as in
    :func:`structure_nodes`).
    Post-condition: the structure nodes are gone from ``gm``; one ``call_module`` node ``structure_cache`` (a
    :class:`StructureCache`), placed right after the inputs and their sizes, computes them, and each frontier node
    becomes a ``getitem`` of its output, keeping its name, place and metadata, so site plans and shape records
    that name those nodes stay valid. Unchanged when the graph has no structure frontier.
    """
    part = structure_nodes(gm, feature_inputs)
    if not part.frontier:
        return gm
    last_input = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
    for size in [n for n in part.inputs if n.op != "placeholder"]:  # sizes of inputs only read inputs
        last_input.append(size)
        last_input = size
    gm.add_module(CACHE_MODULE, StructureCache(_extract(gm, part)))
    with gm.graph.inserting_after(last_input):
        call = gm.graph.call_module(CACHE_MODULE, tuple(part.inputs))
    frontier = set(part.frontier)
    for i, node in enumerate(part.frontier):  # becomes a read of the cached value, in place: same name and users
        node.op, node.target, node.kwargs = "call_function", operator.getitem, {}
        node.args = (call, i)
    for node in reversed(part.nodes):
        if node not in frontier:
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm

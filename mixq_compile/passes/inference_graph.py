"""Pass: remove what only matters while training, so the graph states exactly what inference computes.

Pre-condition: a (frozen) quantized graph, possibly with a :class:`StructureCache` module (``cache_structure``) and
Degree-Quant bypasses (``degree_quant``). Post-condition: the structure cache is inlined (lowering makes its own
structure/feature split, and an artifact caches it at run time), and every ``protect(value, quantized, mask)`` reads
``quantized`` (Degree-Quant protects nothing at inference), with the mask computation removed. The input module is
not modified: the pass works on a copy.
"""

from __future__ import annotations

import operator

from torch import fx

from ..errors import MixQError
from ..graph_copy import quiet_deepcopy
from ..ir.structure_cache import StructureCache
from ..quant.degree_quant import protect
from .split_structure import remove_dead_code


def _inline_structure_cache(gm: fx.GraphModule, node: fx.Node, cache: StructureCache) -> None:
    sub = cache.subgraph
    if any(n.op in ("get_attr", "call_module") for n in sub.graph.nodes):
        raise MixQError(f"cannot inline structure cache {node.target!r}: it reads module state")
    placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
    env = dict(zip(placeholders, node.args, strict=True))
    with gm.graph.inserting_before(node):
        outputs = gm.graph.graph_copy(sub.graph, env)
    outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
    for user in list(node.users):
        if user.op != "call_function" or user.target is not operator.getitem:
            raise MixQError(f"structure cache {node.target!r} is read other than by indexing ({user.format_node()})")
        user.replace_all_uses_with(outputs[user.args[1]])
        gm.graph.erase_node(user)
    gm.graph.erase_node(node)


def inference_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` without training-only machinery (see module docstring)."""
    gm = quiet_deepcopy(gm)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), StructureCache):
            _inline_structure_cache(gm, node, gm.get_submodule(node.target))
        elif node.op == "call_function" and node.target is protect:
            node.replace_all_uses_with(node.args[1])
            gm.graph.erase_node(node)
    remove_dead_code(gm.graph)
    gm.graph.lint()
    gm.recompile()
    return gm

"""Pass: let the aggregations and input layers of 2- and 4-bit codes read them packed (torch backend).

Precondition: a feature program after :func:`~mixq_compile.lowering.fuse_requantize.fuse_requantize` (sum
aggregations are ``mixq::csr_sum[_requantize|_dequantize]``, input layers ``mixq::quantize_linear[_requantize]``).
Postcondition:

- every CSR aggregation whose code table comes from a producer that clamps it to at most 16 levels (a quantize or
  requantize of at most 4 bits, possibly through ``relu_codes``) is a
  ``mixq::csr_sum_narrow[_requantize|_dequantize]``, which packs the table and reads it packed when the table is
  large enough for that to pay (:func:`~mixq_compile.ops.packed.packing_pays`, decided at run time: artifacts take
  any graph size);
- every input layer whose int8 weight constant spans at most 16 values reads a packed copy of it
  (``mixq::quantize_linear_packed[_requantize]``), and the unpacked constant leaves the program, so the artifact
  stores 2 (4) codes a byte.

The results are the same integers (the packed ops are exact, :mod:`mixq_compile.ops.packed`); what changes is how
many bytes the kernels read: on a graph whose code table does not fit in the caches, the aggregation's gathers.
"""

from __future__ import annotations

import torch
from torch import fx

from ..graph_copy import quiet_deepcopy
from ..ops.packed import pack_reference, packing_bits
from .code_ranges import code_range
from .constants import constant, drop_constant

mixq = torch.ops.mixq

#: aggregations and their narrow-code forms (which take qmin, bits after ``rows``, argument 5)
_NARROW_AGGREGATION = {
    mixq.csr_sum.default: mixq.csr_sum_narrow.default,
    mixq.csr_sum_requantize.default: mixq.csr_sum_narrow_requantize.default,
    mixq.csr_sum_dequantize.default: mixq.csr_sum_narrow_dequantize.default,
}
#: input layers and their packed forms (the packed form takes w_qmin, w_bits, out_features after ``w_t``, argument 5)
_PACKED_INPUT_LAYER = {
    mixq.quantize_linear.default: mixq.quantize_linear_packed.default,
    mixq.quantize_linear_requantize.default: mixq.quantize_linear_packed_requantize.default,
}


def _pack_aggregation(gm: fx.GraphModule, node: fx.Node) -> bool:
    table = node.args[3]
    bounds = code_range(table)
    bits = packing_bits(*bounds) if bounds is not None else None
    if bits is None:
        return False
    with gm.graph.inserting_before(node):
        args = (*node.args[:6], bounds[0], bits, *node.args[6:])
        call = gm.graph.call_function(_NARROW_AGGREGATION[node.target], args)
    _replace(gm, node, call)
    return True


def _pack_input_layer(gm: fx.GraphModule, node: fx.Node) -> bool:
    w_node = node.args[5]
    if not isinstance(w_node, fx.Node) or w_node.op != "get_attr":
        return False
    w_t = constant(gm, w_node.target)
    if w_t.dtype != torch.int8 or w_t.dim() != 2 or w_t.numel() == 0:
        return False
    w_qmin, w_qmax = int(w_t.min()), int(w_t.max())
    bits = packing_bits(w_qmin, w_qmax)
    if bits is None:
        return False
    name = f"{w_node.target.replace('.', '_')}_packed{bits}"
    gm.register_buffer(name, pack_reference(w_t, w_qmin, bits))
    with gm.graph.inserting_before(node):
        packed = gm.graph.get_attr(name)
        args = (*node.args[:5], packed, w_qmin, bits, w_t.shape[1], *node.args[6:])
        call = gm.graph.call_function(_PACKED_INPUT_LAYER[node.target], args)
    _replace(gm, node, call)
    if not w_node.users:  # the unpacked weights leave the program (and the artifact)
        gm.graph.erase_node(w_node)
        drop_constant(gm, w_node.target)
    return True


def _replace(gm: fx.GraphModule, old: fx.Node, new: fx.Node) -> None:
    new.meta = dict(old.meta)
    old.replace_all_uses_with(new)
    gm.graph.erase_node(old)


def pack_narrow_codes(features: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """A copy of ``features`` whose 2- and 4-bit aggregations read their tables packed where that pays and whose
    2- and 4-bit input-layer weights are stored packed, and
    how many ops now read packed codes."""
    gm = quiet_deepcopy(features)
    packed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in _NARROW_AGGREGATION:
            packed += _pack_aggregation(gm, node)
        elif node.target in _PACKED_INPUT_LAYER:
            packed += _pack_input_layer(gm, node)
    gm.graph.lint()
    gm.recompile()
    return gm, packed

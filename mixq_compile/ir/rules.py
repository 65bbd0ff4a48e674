"""Declarative rules that say which ATen ops are quantization points and what their operands mean.

The site finder is generic graph walking; everything op-specific lives in these tables, so supporting a new op is
one table entry, not a new branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

aten = torch.ops.aten

Category = Literal["dense", "aggregation"]


@dataclass(frozen=True)
class OpRule:
    """A quantizable op.

    Attributes:
        category: "dense" (matmul-like: operands are activations or weights) or "aggregation" (a scatter/segment
            reduction: one operand is the message or pooled tensor).
        operands: positional indices of the float operands to quantize.
        reduce: the reduction, or ``None`` to read it from the node (``reduce_arg``).
        reduce_arg: positional index of the reduction-name argument (scatter_reduce, index_reduce, segment).
        index_arg: positional index of the scatter index (aggregations only).
        weight_axis: for dense ops, the operand axis that holds output channels when the operand is a weight.
    """

    category: Category
    operands: tuple[int, ...]
    reduce: str | None = None
    reduce_arg: int | None = None
    index_arg: int | None = None
    weight_axis: int = 0


OP_RULES: dict[object, OpRule] = {
    aten.linear.default: OpRule("dense", (0, 1), weight_axis=0),
    aten.mm.default: OpRule("dense", (0, 1), weight_axis=-1),
    aten.matmul.default: OpRule("dense", (0, 1), weight_axis=-1),
    aten.bmm.default: OpRule("dense", (0, 1), weight_axis=-1),
    aten.addmm.default: OpRule("dense", (1, 2), weight_axis=-1),
    aten.scatter_add.default: OpRule("aggregation", (3,), reduce="sum", index_arg=2),
    aten.scatter_add_.default: OpRule("aggregation", (3,), reduce="sum", index_arg=2),
    aten.scatter_reduce.two: OpRule("aggregation", (3,), reduce_arg=4, index_arg=2),
    aten.scatter_reduce_.two: OpRule("aggregation", (3,), reduce_arg=4, index_arg=2),
    aten.index_add.default: OpRule("aggregation", (3,), reduce="sum", index_arg=2),
    aten.index_add_.default: OpRule("aggregation", (3,), reduce="sum", index_arg=2),
    aten.index_reduce.default: OpRule("aggregation", (3,), reduce_arg=4, index_arg=2),
    aten.index_reduce_.default: OpRule("aggregation", (3,), reduce_arg=4, index_arg=2),
    aten.segment_reduce.default: OpRule("aggregation", (0,), reduce_arg=1),
}

#: Reductions whose result is one of the inputs: the output stays on the input's quantization grid.
SELECTING_REDUCTIONS = frozenset({"amax", "amin", "max", "min"})

#: Ops that keep every element in its row-major place (views, broadcasts, copies).
_RESHAPING_OPS = frozenset(
    {
        aten.view.default,
        aten.reshape.default,
        aten._unsafe_view.default,
        aten.expand.default,
        aten.expand_as.default,
        aten.unsqueeze.default,
        aten.squeeze.default,
        aten.squeeze.dim,
        aten.squeeze.dims,
        aten.flatten.using_ints,
        aten.clone.default,
        aten.contiguous.default,
        aten.alias.default,
    }
)

#: Ops that only move, select or gather elements: a quantized value stays quantized through them, and a quantizer
#: requested on their output is placed on their (first) input instead, where it touches fewer elements.
MOVEMENT_OPS = _RESHAPING_OPS | {
    aten.permute.default,
    aten.transpose.int,
    aten.t.default,
    aten.index_select.default,
    aten.index.Tensor,
    aten.gather.default,
    aten.select.int,
    aten.slice.Tensor,
    aten.unflatten.int,
}

#: Ops that gather node rows along edges: their output is a per-edge view of node features (x_j, x_i).
GATHER_OPS = frozenset({aten.index_select.default, aten.index.Tensor, aten.gather.default})

#: Positional index of each gather's row index (``aten.index.Tensor`` takes a list: its first non-None entry).
GATHER_INDEX_ARG = {aten.index_select.default: 2, aten.index.Tensor: 1, aten.gather.default: 2}

#: Ops that only broadcast or re-type an index (PyG's ``scatter`` views and expands the index to the source's
#: shape): two indices equal up to these ops address the same rows.
INDEX_BROADCAST_OPS = _RESHAPING_OPS | {aten._to_copy.default, aten.to.dtype}

#: Element-wise ops that keep values on the input's grid (given a grid containing zero): a quantized value stays
#: quantized through them in inference. Dropout is the identity at inference time.
GRID_PRESERVING_OPS = frozenset(
    {
        aten.relu.default,
        aten.relu_.default,
        aten.dropout.default,
        aten.feature_dropout.default,
        aten.alpha_dropout.default,
        aten.max.default,
        aten.amax.default,
    }
)

#: Ops whose output depends only on the input's shape, dtype and device, never on its values (e.g. the ones that
#: PyG's mean aggregation scatters to count rows): their output is not a feature value even when the input is.
SHAPE_ONLY_OPS = frozenset(
    {
        aten.new_ones.default,
        aten.new_zeros.default,
        aten.new_full.default,
        aten.new_empty.default,
        aten.ones_like.default,
        aten.zeros_like.default,
        aten.full_like.default,
        aten.empty_like.default,
    }
)

#: Ops whose output is never negative (their quantizer can use the unsigned range).
NON_NEGATIVE_OPS = frozenset(
    {
        aten.relu.default,
        aten.relu_.default,
        aten.relu6.default,
        aten.sigmoid.default,
        aten.softmax.int,
        aten._softmax.default,
        aten.exp.default,
        aten.abs.default,
    }
)

#: Element-wise products that can scale a message by a per-edge factor.
MESSAGE_SCALE_OPS = frozenset({aten.mul.Tensor, aten.mul_.Tensor})

#: Ops that carry no computation worth listing as "left in float".
NON_COMPUTE_OPS = (
    MOVEMENT_OPS
    | SHAPE_ONLY_OPS
    | {
        aten.sym_size.int,
        aten.sym_numel.default,
        aten._assert_scalar.default,
        aten.zeros.default,
        aten.full.default,
        aten.ones.default,
        aten.arange.start,
        aten.arange.default,
        aten.item.default,
        aten.cat.default,
        aten.stack.default,
        aten.to.dtype,
        aten._to_copy.default,
        aten.detach.default,
        aten.lift_fresh_copy.default,
    }
)


def rule_for(target: object) -> OpRule | None:
    return OP_RULES.get(target)

"""Sums and selections of messages scattered into rows, as ONNX subgraphs: what the integer aggregations and the
float scatter ops of the ``onnx`` backend share."""

from __future__ import annotations

import math

import numpy as np
import torch
from onnx import numpy_helper
from torch import Tensor, fx

from .graph import OnnxGraph, Value

aten = torch.ops.aten


def row_index(g: OnnxGraph, index: fx.Node, src: fx.Node) -> Value | None:
    """The 1-D target rows when ``index`` only repeats one row index across the columns of ``src`` (PyG's
    ``index.view(-1, 1).expand_as(src)``), else ``None``: such scatters are row scatters."""
    column = index
    if index.op == "call_function" and index.target in (aten.expand_as.default, aten.expand.default):
        column = index.args[0]
    val = column.meta.get("val") if isinstance(column, fx.Node) else None
    if not isinstance(val, Tensor) or val.dim() == 0 or any(s != 1 for s in val.shape[1:]):
        return None
    src_val = src.meta.get("val") if isinstance(src, fx.Node) else None
    if isinstance(src_val, Tensor) and src_val.dim() < val.dim():
        return None
    return g.emit("Reshape", [g.value(column).name, g.const([-1], torch.int64)], torch.int64)


def segment_sum(g: OnnxGraph, messages: Value, rows: Value, num_rows: Value) -> Value:
    """``out[r] = Σ_{e: rows[e] = r} messages[e]`` by a sorted prefix sum (see module docstring).


    Everything except the message gather, the prefix sum and the final differences depends only on ``rows`` and
    ``num_rows``, so the hoisting pass moves it to the structure graph.
    """
    acc_dtype = torch.float64 if messages.dtype.is_floating_point else torch.int32
    order = g.emit("TopK", [rows.name, g.shape(rows).name], torch.int64, outputs=2, largest=0, sorted=1)
    permutation = Value(f"{order.name}_1", torch.int64)
    sorted_messages = g.emit("Gather", [g.cast(messages, acc_dtype).name, permutation.name], acc_dtype, axis=0)
    # P[k] = the sum of the first k sorted messages, P[0] = 0 from a zero row in front, so that every row, empty
    # or not, is P[end] - P[start] (reading P[start - 1] instead gave a leading empty row, start = end = 0, the
    # sum of every message: Gather wraps index -1 around)
    shape = g.shape(sorted_messages)
    trailing = g.emit("Slice", [shape.name, g.const([1], torch.int64), g.const([2**62], torch.int64)], torch.int64)
    row_shape = g.emit("Concat", [g.const([1], torch.int64), trailing.name], torch.int64, axis=0)
    zero_row = zeros_of_size(g, row_shape, acc_dtype)
    padded = g.emit("Concat", [zero_row.name, sorted_messages.name], acc_dtype, axis=0)
    total = _row_sums(g, padded, rows, num_rows)
    return g.cast(total, messages.dtype) if acc_dtype != messages.dtype else total


def _row_sums(g: OnnxGraph, messages: Value, rows: Value, num_rows: Value) -> Value:
    """``P[end_r] - P[start_r]`` per row, ``P`` the prefix sum of ``messages``: a zero message followed by the
    entries sorted by their (int64) ``rows``."""
    prefix = g.emit("CumSum", [messages.name, g.const(0, torch.int64)], messages.dtype)
    starts, ends = _row_bounds(g, rows, num_rows)
    upto_end = g.emit("Gather", [prefix.name, ends.name], messages.dtype, axis=0)
    upto_start = g.emit("Gather", [prefix.name, starts.name], messages.dtype, axis=0)
    return g.emit("Sub", [upto_end.name, upto_start.name], messages.dtype)


def _row_bounds(g: OnnxGraph, rows: Value, num_rows: Value) -> tuple[Value, Value]:
    """``(starts, ends)`` of each row's run of entries once ``rows`` (int64) is sorted: a count per row
    (``ScatterElements`` add of ones) and its prefix sum. Structure-only, so hoisted."""
    ones = g.emit("Expand", [g.const(1, torch.int64), g.shape(rows).name], torch.int64)
    empty = zeros_of_size(g, num_rows, torch.int64)
    per_row = g.emit("ScatterElements", [empty.name, rows.name, ones.name], torch.int64, axis=0, reduction="add")
    ends = g.emit("CumSum", [per_row.name, g.const(0, torch.int64)], torch.int64)
    return g.emit("Sub", [ends.name, per_row.name], torch.int64), ends


def csr_row_sum(g: OnnxGraph, dst: Value, src: Value, weight: Value | None, table: Value, num_rows: Value) -> Value:
    """``out[r] = Σ_{e: dst[e] = r} weight[e] * table[src[e]]`` for ``dst`` sorted ascending and a centered
    ``[N, C]`` table (``mixq::csr_sum``): one prefix sum over the gathered messages, differenced at the row
    bounds.

    ``P[k]`` is the sum of the first ``k`` messages and ``out[r] = P[end_r] - P[start_r]``. A zero message in front
    gives ``P[0] = 0`` with no select over the output: the table gets a zero row 0 (so that a graph without nodes
    still has a row to gather), every source moves down one, and the edge list starts with source 0. The edges
    arrive sorted from the structure program, so the messages are gathered in row order directly (one ``[E, C]``
    gather); every index computation reads only structure values, which the hoisting pass moves to the structure
    graph.
    Integer sums are int32 (wrapping prefix sums difference exactly), float sums float64.
    """
    acc_dtype = torch.float64 if table.dtype.is_floating_point else torch.int32
    table = g.cast(table, acc_dtype)
    src = g.cast(src, torch.int64)
    table = g.emit("Pad", [table.name, g.const([1, 0, 0, 0], torch.int64)], acc_dtype)
    src = g.emit("Add", [src.name, g.const(1, torch.int64)], torch.int64)
    src = g.emit("Concat", [g.const([0], torch.int64), src.name], torch.int64, axis=0)
    messages = g.emit("Gather", [table.name, src.name], acc_dtype, axis=0)
    if weight is not None:
        weight = g.emit("Concat", [g.const([0], acc_dtype), g.cast(weight, acc_dtype).name], acc_dtype, axis=0)
        column = g.emit("Reshape", [weight.name, g.const([-1, 1], torch.int64)], acc_dtype)
        messages = g.emit("Mul", [messages.name, column.name], acc_dtype)
    return _row_sums(g, messages, g.cast(dst, torch.int64), num_rows)


def zeros_of_size(g: OnnxGraph, size, dtype: torch.dtype) -> Value:
    """Zeros of a (possibly symbolic) size."""
    value = numpy_helper.from_array(np.zeros(1, dtype=torch.empty(0, dtype=dtype).numpy().dtype))
    return g.emit("ConstantOfShape", [g.ints(size).name], dtype, value=value)


def scatter_into_zeros(g: OnnxGraph, messages: Value, index: fx.Node, src: fx.Node, size, dim: int) -> Value:
    """Sum-scatter ``messages`` into zeros of ``size``: a segment sum for row scatters, else ScatterElements."""
    rows = row_index(g, index, src) if dim == 0 else None
    if rows is not None:
        num_rows = g.emit("Slice", [g.ints(size).name, g.const([0], torch.int64), g.const([1], torch.int64)],
                          torch.int64)  # fmt: skip
        return segment_sum(g, messages, rows, num_rows)
    zeros = zeros_of_size(g, size, messages.dtype)
    return g.emit("ScatterElements", [zeros.name, g.value(index).name, messages.name], messages.dtype, axis=dim,
                  reduction="add")  # fmt: skip


def scatter_select(g: OnnxGraph, base: Value, index: Value, src: Value, dim: int, reduce: str) -> Value:
    """Max/min scatter where untouched rows keep 0 (``include_self=False`` on zeros): ONNX's reduction includes
    the base, so the base starts at the identity of the reduction, which is replaced by 0 afterwards."""
    kind = {"amax": "max", "amin": "min"}[reduce]
    if base.dtype.is_floating_point:
        identity = -math.inf if kind == "max" else math.inf
    else:
        info = torch.iinfo(base.dtype)
        identity = info.min if kind == "max" else info.max
    start = g.emit("Expand", [g.const(identity, base.dtype), g.shape(base).name], base.dtype)
    out = g.emit("ScatterElements", [start.name, index.name, src.name], base.dtype, axis=dim, reduction=kind)
    untouched = g.emit("Equal", [out.name, g.const(identity, base.dtype)], torch.bool)
    return g.emit("Where", [untouched.name, g.const(0, base.dtype), out.name], base.dtype)

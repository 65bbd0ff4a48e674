"""Converters of the ``onnx`` backend for ops that build, reshape, select, index or combine tensors without
arithmetic (views, gathers, slices, concatenation, splits, scatters of rows, masks, fills, ranges); the arithmetic
and integer instructions are in :mod:`.float_ops` and :mod:`.integer_ops`."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from onnx import numpy_helper
from torch import Tensor, fx

from ..fx_args import arg, single_index
from .graph import OnnxGraph, Value, result_dtype, unsupported

aten = torch.ops.aten


def _view(g: OnnxGraph, node: fx.Node) -> Value:
    """``view``/``reshape``: ``allowzero=1`` so a literal 0 means size 0, as in PyTorch."""
    x = g.value(node.args[0])
    return replace(g.emit("Reshape", [x.name, g.ints(node.args[1]).name], x.dtype, allowzero=1), offset=x.offset)


def _expand_as(g: OnnxGraph, node: fx.Node) -> Value:
    x, other = (g.value(a) for a in node.args)
    return replace(g.emit("Expand", [x.name, g.shape(other).name], x.dtype), offset=x.offset)


def _expand(g: OnnxGraph, node: fx.Node) -> Value:
    """``expand``: -1 (keep the dim) becomes 1, which ONNX's broadcasting Expand keeps as well."""
    x, sizes = g.value(node.args[0]), node.args[1]
    sizes = [1 if s == -1 else s for s in sizes]
    return replace(g.emit("Expand", [x.name, g.ints(sizes).name], x.dtype), offset=x.offset)


def _index_select(g: OnnxGraph, node: fx.Node) -> Value:
    x, dim, index = node.args
    x = g.value(x)
    return replace(g.emit("Gather", [x.name, g.value(index).name], x.dtype, axis=dim), offset=x.offset)


def _select(g: OnnxGraph, node: fx.Node) -> Value:
    x, dim, index = node.args
    x = g.value(x)
    return replace(g.emit("Gather", [x.name, g.scalar(index, torch.int64).name], x.dtype, axis=dim), offset=x.offset)


def _slice(g: OnnxGraph, node: fx.Node) -> Value:
    x = g.value(node.args[0])
    dim, start, end, step = (arg(node, i, n, d) for i, n, d in ((1, "dim", 0), (2, "start", None),
                                                                 (3, "end", None), (4, "step", 1)))  # fmt: skip
    start = 0 if start is None else start
    end = torch.iinfo(torch.int64).max if end is None else end
    bounds = [g.ints([start]).name, g.ints([end]).name]
    names = [x.name, *bounds, g.const([dim], torch.int64), g.const([step], torch.int64)]
    return replace(g.emit("Slice", names, x.dtype), offset=x.offset)


def _index(g: OnnxGraph, node: fx.Node) -> Value:
    """``x[..., idx, ...]`` with one index tensor: a boolean mask is ``Compress``, integers are ``Gather``."""
    x, found = g.value(node.args[0]), single_index(node)
    if found is None:
        raise unsupported(node, "indexing with more than one index tensor")
    axis, index = found[0], g.value(found[1])
    op_type = "Compress" if index.dtype == torch.bool else "Gather"
    return replace(g.emit(op_type, [x.name, index.name], x.dtype, axis=axis), offset=x.offset)


def _unsqueeze(g: OnnxGraph, node: fx.Node) -> Value:
    x = g.value(node.args[0])
    return replace(g.emit("Unsqueeze", [x.name, g.const([node.args[1]], torch.int64)], x.dtype), offset=x.offset)


def _squeeze(g: OnnxGraph, node: fx.Node) -> Value:
    x = g.value(node.args[0])
    dims = node.args[1] if len(node.args) > 1 else None
    inputs = [x.name] if dims is None else [x.name, g.const(list(dims) if isinstance(dims, list | tuple)
                                                           else [dims], torch.int64)]  # fmt: skip
    return replace(g.emit("Squeeze", inputs, x.dtype), offset=x.offset)


def _cat(g: OnnxGraph, node: fx.Node) -> Value:
    values = [g.value(t) for t in node.args[0]]
    dim = arg(node, 1, "dim", 0)
    if not all(v.offset for v in values):
        dtype = result_dtype(g, node, node.args[0])
        values = [g.cast(v, dtype) for v in values]
    return replace(g.emit("Concat", [v.name for v in values], values[0].dtype, axis=dim), offset=values[0].offset)


def _stack(g: OnnxGraph, node: fx.Node) -> Value:
    """``stack``: each tensor unsqueezed at ``dim`` (of the result's rank), then concatenated there."""
    dim = arg(node, 1, "dim", 0)
    dtype = result_dtype(g, node, node.args[0])
    axis = g.const([dim], torch.int64)
    parts = [g.emit("Unsqueeze", [g.cast(g.value(t), dtype).name, axis], dtype).name for t in node.args[0]]
    return g.emit("Concat", parts, dtype, axis=dim)


def _split(g: OnnxGraph, node: fx.Node) -> list[Value]:
    """``split``/``split_with_sizes`` into pieces of the sizes recorded at capture (the split dim must be static:
    ONNX's ``num_outputs`` sizes its pieces differently from PyTorch's ``split_size``)."""
    x, dim = g.value(node.args[0]), arg(node, 2, "dim", 0)
    pieces = node.meta.get("val")
    sizes = [p.shape[dim] for p in pieces] if isinstance(pieces, list | tuple) else []
    if not sizes or not all(isinstance(s, int) for s in sizes):
        raise unsupported(node, "a split along a dimension whose size depends on the graph")
    first = g.emit("Split", [x.name, g.const(sizes, torch.int64)], x.dtype, outputs=len(sizes), axis=dim)
    names = [first.name] + [f"{first.name}_{i}" for i in range(1, len(sizes))]
    return [replace(first, name=name, offset=x.offset) for name in names]


def _getitem(g: OnnxGraph, node: fx.Node) -> Value:
    """One piece of a multi-output op (``split``, ``sort``)."""
    parts = g.env.get(node.args[0])
    if not isinstance(parts, list):
        raise unsupported(node, "indexing a value that is not a list of tensors")
    return parts[node.args[1]]


def _sort(g: OnnxGraph, node: fx.Node) -> list[Value]:
    """``sort(x, dim, descending)``: (values, indices) as a ``TopK`` over the whole dim, read with ``getitem``.
    Equal keys may come out in any order (ONNX does not promise a stable ``TopK``): the sorts of a program are
    edge orderings for aggregations, whose integer sums do not depend on the order of equal targets."""
    x = g.plain(g.value(node.args[0]))
    dim = arg(node, 1, "dim", -1)
    descending = bool(arg(node, 2, "descending", False))
    size = g.emit("Gather", [g.shape(x).name, g.const([dim], torch.int64)], torch.int64, axis=0)
    values = g.emit("TopK", [x.name, size.name], x.dtype, outputs=2, axis=dim, largest=int(descending), sorted=1)
    return [values, Value(f"{values.name}_1", torch.int64)]


def _repeat(g: OnnxGraph, node: fx.Node) -> Value:
    """``repeat`` as ``Tile``; more repeats than dims first adds leading size-1 dims, as PyTorch does."""
    x, repeats = g.value(node.args[0]), node.args[1]
    val = node.args[0].meta.get("val")
    extra = len(repeats) - val.dim() if isinstance(val, Tensor) else 0
    if extra < 0:
        raise unsupported(node, "repeat with fewer repeats than dims")
    if extra:
        x = replace(g.emit("Unsqueeze", [x.name, g.const(list(range(extra)), torch.int64)], x.dtype), offset=x.offset)
    return replace(g.emit("Tile", [x.name, g.ints(repeats).name], x.dtype), offset=x.offset)


def _index_copy(g: OnnxGraph, node: fx.Node) -> Value:
    """``base.index_copy(0, rows, source)``: rows of ``source`` written into ``base`` (``ScatterND``)."""
    base, dim, index, source = node.args[:4]
    val = base.meta.get("val") if isinstance(base, fx.Node) else None
    if dim < 0 and isinstance(val, Tensor):
        dim += val.dim()
    if dim != 0:
        raise unsupported(node, f"index_copy along dim {dim}; only dim 0 is translated")
    target = g.plain(g.value(base))
    rows = _row_indices(g, g.value(index))
    update = g.cast(g.value(source), target.dtype)
    return g.emit("ScatterND", [target.name, rows.name, update.name], target.dtype)


def _row_indices(g: OnnxGraph, index: Value) -> Value:
    """Integer rows as ``ScatterND`` indices (``[k, 1]`` int64)."""
    return g.emit("Unsqueeze", [g.cast(index, torch.int64).name, g.const([-1], torch.int64)], torch.int64)


def _nonzero(g: OnnxGraph, node: fx.Node) -> Value:
    return _nonzero_rows(g, g.value(node.args[0]))


def _nonzero_rows(g: OnnxGraph, x: Value) -> Value:
    """``nonzero``: ONNX gives ``[rank, k]``, PyTorch ``[k, rank]``."""
    found = g.emit("NonZero", [x.name], torch.int64)
    return g.emit("Transpose", [found.name], torch.int64, perm=[1, 0])


def _index_put(g: OnnxGraph, node: fx.Node) -> Value:
    """``base[index] = values`` (or ``+=`` with ``accumulate``) for one index tensor on the leading dims (a boolean
    mask over them, or integer rows), as ``ScatterND``; ``values`` is broadcast to the indexed shape (one value per
    selected row and trailing dim), as PyTorch does."""
    base, indices, values = node.args[:3]
    accumulate = arg(node, 3, "accumulate", False)
    if len(indices) != 1 or indices[0] is None:
        raise unsupported(node, "index_put with more than one index tensor")
    target, index = g.plain(g.value(base)), g.value(indices[0])
    if index.dtype == torch.bool:
        rows = _nonzero_rows(g, index)
    else:
        rows = _row_indices(g, index)
    selected = g.emit("Shape", [rows.name], torch.int64, end=1)  # [k]
    indexed_dims = g.emit("Shape", [rows.name], torch.int64, start=1)  # dims the index covers
    trailing = g.emit("Slice", [g.shape(target).name, indexed_dims.name, g.const([2**62], torch.int64)], torch.int64)
    shape = g.emit("Concat", [selected.name, trailing.name], torch.int64, axis=0)
    update = g.cast(g.value(values, target), target.dtype)
    update = g.emit("Expand", [update.name, shape.name], target.dtype)
    return g.emit("ScatterND", [target.name, rows.name, update.name], target.dtype,
                  **({"reduction": "add"} if accumulate else {}))  # fmt: skip


def _arange(g: OnnxGraph, node: fx.Node) -> Value:
    if node.target == aten.arange.default:
        start, end, step = 0, node.args[0], 1
    else:
        start, end = node.args[:2]
        step = arg(node, 2, "step", 1)
    dtype = node.kwargs.get("dtype") or result_dtype(g, node, (start, end))
    names = [g.scalar(v, dtype).name for v in (start, end, step)]
    return g.emit("Range", names, dtype)


def _filled(fill, self_index: int | None, size_index: int) -> Callable[[OnnxGraph, fx.Node], Value]:
    """``zeros``/``ones``/``new_zeros``/``new_ones``/``full``: ``ConstantOfShape``; dtype from the ``dtype`` kwarg,
    else from ``self`` (``new_*``), else float32."""

    def convert(g: OnnxGraph, node: fx.Node) -> Value:
        dtype = node.kwargs.get("dtype")
        if dtype is None and self_index is not None:
            dtype = g.value(node.args[self_index]).plain_dtype
        dtype = dtype or torch.float32
        value = node.args[size_index + 1] if fill is None else fill
        array = np.full(1, value, dtype=torch.empty(0, dtype=dtype).numpy().dtype)
        return g.emit("ConstantOfShape", [g.ints(node.args[size_index]).name], dtype,
                      value=numpy_helper.from_array(array))  # fmt: skip

    convert.__doc__ = "A tensor filled with one value, of a (possibly symbolic) size."
    return convert


#: fx call target -> converter, for the ops of this module.
TENSOR_CONVERTERS: dict[object, Callable[[OnnxGraph, fx.Node], Value]] = {
    aten.stack.default: _stack,
    aten.split.Tensor: _split,
    aten.split_with_sizes.default: _split,
    operator.getitem: _getitem,
    aten.sort.stable: _sort,
    aten.view.default: _view,
    aten.reshape.default: _view,
    aten._unsafe_view.default: _view,
    aten.expand_as.default: _expand_as,
    aten.expand.default: _expand,
    aten.index_select.default: _index_select,
    aten.select.int: _select,
    aten.slice.Tensor: _slice,
    aten.index.Tensor: _index,
    aten.unsqueeze.default: _unsqueeze,
    aten.squeeze.dim: _squeeze,
    aten.squeeze.dims: _squeeze,
    aten.squeeze.default: _squeeze,
    aten.cat.default: _cat,
    aten.repeat.default: _repeat,
    aten.nonzero.default: _nonzero,
    aten.index_copy.default: _index_copy,
    aten.index_copy_.default: _index_copy,
    aten.index_put.default: _index_put,
    aten.index_put_.default: _index_put,
    aten.arange.start: _arange,
    aten.arange.default: _arange,
    aten.ones.default: _filled(1, None, 0),
    aten.zeros.default: _filled(0, None, 0),
    aten.new_zeros.default: _filled(0, 0, 1),
    aten.new_ones.default: _filled(1, 0, 1),
    aten.full.default: _filled(None, None, 0),
    aten.new_full.default: _filled(None, 0, 1),
    aten.new_empty.default: _filled(0, 0, 1),
}

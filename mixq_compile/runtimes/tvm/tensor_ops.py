"""Converters of the TVM backend for float ATen ops beyond the core (comparisons, unary math, reductions,
softmax, matmul, indexing with masks, concatenation, splits, GRU cells, ...): the float islands of PyG convs.
Merged into :data:`mixq_compile.runtimes.tvm.converters.CONVERTERS`."""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, fx
from tvm import relax, tirx

from ..fx_args import arg, single_index
from .float_ops import binary
from .translator import Converter, ConverterMap, dtype_of, normal_axis, shape_of, unsupported

aten = torch.ops.aten


def _index(c: Converter, node: fx.Node) -> relax.Expr:
    """``x[..., idx, ...]`` with one integer index tensor: ``take`` along its axis."""
    x, found = c.tensor(node.args[0]), single_index(node)
    if found is None:
        raise unsupported(node, "indexing with more than one index tensor")
    axis, index = found[0], c.tensor(found[1])
    if dtype_of(index) == "bool":  # a mask: the positions of its true entries (a run-time length)
        if len(shape_of(index)) != 1:
            raise unsupported(node, "a boolean mask of more than one dimension")
        found, count = _true_positions(c, node, index)
        index = c.emit(relax.op.reshape(found, [count]))
    return c.emit(relax.op.take(x, index, axis=axis, mode="wrap"))  # "wrap": -1 is the last, as in PyTorch


def _true_positions(c: Converter, node: fx.Node, mask: relax.Expr) -> tuple[relax.Expr, tirx.Var]:
    """``nonzero(mask)`` as Relax gives it (``[rank, count]``) with its run-time count bound to a fresh size."""
    count = tirx.Var(f"{node.name}_count", "int64")
    rank = len(shape_of(mask))
    found = c.bb.match_cast(c.emit(relax.op.nonzero(mask)), relax.TensorType([rank, count], "int64"))
    return found, count


def _index_put(c: Converter, node: fx.Node) -> relax.Expr:
    """``base[index] = values`` (or ``+=`` with ``accumulate``) for one index tensor on the leading dims (a boolean
    mask over them, or integer rows), as ``scatter_nd`` with ``values`` broadcast to the indexed shape."""
    base, indices, values = node.args[:3]
    if len(indices) != 1 or indices[0] is None:
        raise unsupported(node, "index_put with more than one index tensor")
    target, index = c.tensor(base), c.tensor(indices[0])
    if dtype_of(index) == "bool":
        found, count = _true_positions(c, node, index)
        rows, covered = c.emit(relax.op.permute_dims(found)), len(shape_of(index))
    else:
        count, covered = shape_of(index)[0], 1
        rows = c.emit(relax.op.reshape(c.tensor(index, "int64"), [count, 1]))
    update = c.tensor(values, dtype_of(target))
    update = c.emit(relax.op.broadcast_to(update, [count, *shape_of(target)[covered:]]))
    reduction = "add" if arg(node, 3, "accumulate", False) else "update"
    return c.emit(relax.op.scatter_nd(target, rows, update, reduction))


def _index_copy(c: Converter, node: fx.Node) -> relax.Expr:
    """``base.index_copy(dim, rows, source)`` as ``scatter_elements`` with the rows broadcast over ``source``."""
    base, index, source = (c.tensor(node.args[i]) for i in (0, 2, 3))
    rank = len(shape_of(base))
    axis = normal_axis(node.args[1], rank)
    view = [1] * rank
    view[axis] = -1
    rows = c.emit(relax.op.broadcast_to(c.emit(relax.op.reshape(index, view)), shape_of(source)))
    return c.emit(relax.op.scatter_elements(base, rows, source, axis=axis, reduction="update"))


def _slice(c: Converter, node: fx.Node) -> relax.Expr:
    x = c.tensor(node.args[0])
    dim, start, end, step = (arg(node, i, k, d) for i, k, d in ((1, "dim", 0), (2, "start", None),
                                                                (3, "end", None), (4, "step", 1)))  # fmt: skip
    axis = normal_axis(dim, len(shape_of(x)))
    size = shape_of(x)[axis]
    start, end = c.value(0 if start is None else start), c.value(size if end is None else end)
    if isinstance(end, int) and end >= 2**62:  # PyTorch's "to the end"
        end = size
    return c.emit(relax.op.strided_slice(x, [axis], [start], [end], [step], assume_inbound=False))


_COMPARISONS = {
    aten.eq.Tensor: relax.op.equal,
    aten.eq.Scalar: relax.op.equal,
    aten.ne.Tensor: relax.op.not_equal,
    aten.ne.Scalar: relax.op.not_equal,
    aten.lt.Tensor: relax.op.less,
    aten.lt.Scalar: relax.op.less,
    aten.le.Tensor: relax.op.less_equal,
    aten.le.Scalar: relax.op.less_equal,
    aten.gt.Tensor: relax.op.greater,
    aten.gt.Scalar: relax.op.greater,
    aten.ge.Tensor: relax.op.greater_equal,
    aten.ge.Scalar: relax.op.greater_equal,
}


def _matmul(c: Converter, node: fx.Node) -> relax.Expr:
    """Float matmul (e.g. ARMA's and GatedGraphConv's stacked weights, left in float by the integer lowering)."""
    return c.emit(relax.op.matmul(c.tensor(node.args[0], "float32"), c.tensor(node.args[1], "float32")))


def _where(c: Converter, node: fx.Node) -> relax.Expr:
    cond, a, b = node.args
    dtype = str(node.meta["val"].dtype).removeprefix("torch.") if "val" in node.meta else None
    dtype = dtype or next(dtype_of(c.tensor(v)) for v in (a, b) if isinstance(v, fx.Node | Tensor))
    return c.emit(relax.op.where(c.tensor(cond), c.tensor(a, dtype), c.tensor(b, dtype)))


def _masked_fill(c: Converter, node: fx.Node) -> relax.Expr:
    x, mask, fill = node.args
    value = c.tensor(x)
    return c.emit(relax.op.where(c.tensor(mask), relax.const(fill, dtype_of(value)), value))


def _div(c: Converter, node: fx.Node) -> relax.Expr:
    """True division (PyTorch's ``/`` on floats; float islands such as a mean's ``sum / count``)."""
    if node.kwargs.get("rounding_mode") is not None:
        raise unsupported(node, f"rounding_mode={node.kwargs['rounding_mode']!r}")
    return binary(relax.op.divide, true_division=True)(c, node)


def unary(op: Callable, *, float_only: bool = False) -> Callable[[Converter, fx.Node], relax.Expr]:
    """``float_only``: PyTorch computes the op of an integer tensor in float32 (``sqrt``, ``exp``, ...)."""

    def convert(c: Converter, node: fx.Node) -> relax.Expr:
        x = c.tensor(node.args[0])
        return c.emit(op(c.tensor(x, "float32") if float_only and not dtype_of(x).startswith("float") else x))

    return convert


def _leaky_relu(c: Converter, node: fx.Node) -> relax.Expr:
    slope = arg(node, 1, "negative_slope", 0.01)
    return c.emit(relax.op.nn.leakyrelu(c.tensor(node.args[0]), float(slope)))


def _softmax(c: Converter, node: fx.Node) -> relax.Expr:
    return c.emit(relax.op.nn.softmax(c.tensor(node.args[0], "float32"), node.args[1]))


def _reduce(c: Converter, node: fx.Node) -> relax.Expr:
    x = c.tensor(node.args[0])
    summing = node.target != aten.mean.dim
    dtype = node.kwargs.get("dtype") or (torch.int64 if summing and dtype_of(x) == "bool" else None)
    if dtype is not None:  # a sum of booleans counts them (int64), as an explicit dtype does
        x = c.tensor(x, str(dtype).removeprefix("torch."))
    if node.target == aten.sum.default:
        return c.emit(relax.op.sum(x))
    dims, keepdim = arg(node, 1, "dim"), bool(arg(node, 2, "keepdim", False))
    rank = len(shape_of(x))
    dims = [dims] if isinstance(dims, int) else dims
    axes = [normal_axis(d, rank) for d in dims] if dims else None  # dim=[] reduces over every dim, as no dim does
    op = relax.op.sum if node.target == aten.sum.dim_IntList else relax.op.mean
    return c.emit(op(x, axes, keepdim))


def _identity(c: Converter, node: fx.Node) -> relax.Expr:
    return c.tensor(node.args[0])


def _unsqueeze(c: Converter, node: fx.Node) -> relax.Expr:
    x = c.tensor(node.args[0])
    return c.emit(relax.op.expand_dims(x, normal_axis(node.args[1], len(shape_of(x)) + 1)))


def _squeeze(c: Converter, node: fx.Node) -> relax.Expr:
    x = c.tensor(node.args[0])
    dims = node.args[1] if len(node.args) > 1 else None
    rank = len(shape_of(x))
    listed = dims if isinstance(dims, list | tuple) else [dims]
    axes = None if dims is None else [normal_axis(d, rank) for d in listed]
    return c.emit(relax.op.squeeze(x, axes))


def _to_dtype(c: Converter, node: fx.Node) -> relax.Expr:
    dtype = node.args[1] if node.target == aten.to.dtype and len(node.args) > 1 else node.kwargs.get("dtype")
    x = c.tensor(node.args[0])
    if dtype is None:
        return x
    return c.tensor(node.args[0], str(dtype).removeprefix("torch."))


def _repeat(c: Converter, node: fx.Node) -> relax.Expr:
    """``repeat`` is numpy's ``tile`` (more repeats than dims add leading dims in both)."""
    return c.emit(relax.op.tile(c.tensor(node.args[0]), list(c.value(node.args[1]))))


def _common_dtype(c: Converter, node: fx.Node, tensors: list) -> str:
    val = node.meta.get("val")
    return str(val.dtype).removeprefix("torch.") if isinstance(val, Tensor) else dtype_of(c.tensor(tensors[0]))


def _cat(c: Converter, node: fx.Node) -> relax.Expr:
    tensors, dim = node.args[0], arg(node, 1, "dim", 0)
    dtype = _common_dtype(c, node, tensors)
    values = [c.tensor(t, dtype) for t in tensors]
    return c.emit(relax.op.concat(values, normal_axis(dim, len(shape_of(values[0])))))


def _stack(c: Converter, node: fx.Node) -> relax.Expr:
    tensors, dim = node.args[0], arg(node, 1, "dim", 0)
    dtype = _common_dtype(c, node, tensors)
    values = [c.tensor(t, dtype) for t in tensors]
    return c.emit(relax.op.stack(values, normal_axis(dim, len(shape_of(values[0])) + 1)))


def _split(c: Converter, node: fx.Node) -> relax.Expr:
    """``split`` at the piece sizes recorded at capture (the split dim must be static)."""
    x = c.tensor(node.args[0])
    dim = normal_axis(arg(node, 2, "dim", 0), len(shape_of(x)))
    pieces = node.meta.get("val")
    sizes = [p.shape[dim] for p in pieces] if isinstance(pieces, list | tuple) else []
    if not sizes or not all(isinstance(s, int) for s in sizes):
        raise unsupported(node, "a split along a dimension whose size depends on the graph")
    return c.emit(relax.op.split(x, [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)], dim))


def _getitem(c: Converter, node: fx.Node) -> relax.Expr:
    """One piece of a multi-output op (``split``)."""
    return c.emit(relax.TupleGetItem(c.value(node.args[0]), node.args[1]))


def _gru_cell(c: Converter, node: fx.Node) -> relax.Expr:
    """``gru_cell(x, h, W_ih, W_hh, b_ih, b_hh)`` (GatedGraphConv's update), gates in PyTorch's order (reset,
    update, new): ``h' = (1 - z) * n + z * h``."""
    x, h = c.tensor(node.args[0], "float32"), c.tensor(node.args[1], "float32")
    op = relax.op

    def gates(value: relax.Expr, weight: object, bias: object) -> list[relax.Expr]:
        out = c.emit(op.matmul(value, c.emit(op.permute_dims(c.tensor(weight, "float32")))))
        if bias is not None:
            out = c.emit(op.add(out, c.tensor(bias, "float32")))
        parts = c.emit(op.split(out, 3, -1))
        return [c.emit(relax.TupleGetItem(parts, i)) for i in range(3)]

    biases = [node.args[i] if len(node.args) > i else None for i in (4, 5)]
    (ir, iz, in_), (hr, hz, hn) = gates(x, node.args[2], biases[0]), gates(h, node.args[3], biases[1])
    r = c.emit(op.sigmoid(c.emit(op.add(ir, hr))))
    z = c.emit(op.sigmoid(c.emit(op.add(iz, hz))))
    n = c.emit(op.tanh(c.emit(op.add(in_, c.emit(op.multiply(r, hn))))))
    new = c.emit(op.multiply(c.emit(op.subtract(relax.const(1.0, "float32"), z)), n))
    return c.emit(op.add(new, c.emit(op.multiply(z, h))))


_FLOAT_UNARY = {
    aten.sqrt.default: relax.op.sqrt,
    aten.exp.default: relax.op.exp,
    aten.log.default: relax.op.log,
    aten.sigmoid.default: relax.op.sigmoid,
    aten.tanh.default: relax.op.tanh,
}


def _reciprocal(c: Converter, node: fx.Node) -> relax.Expr:
    x = c.tensor(node.args[0])
    x = x if dtype_of(x).startswith("float") else c.tensor(x, "float32")
    return c.emit(relax.op.divide(relax.const(1.0, dtype_of(x)), x))


def _clamp(c: Converter, node: fx.Node) -> relax.Expr:
    """``clamp(x, min, max)`` with constant bounds (a mean's ``count.clamp(min=1)``); a missing bound is the
    dtype's extreme."""
    x = c.tensor(node.args[0])
    low, high = arg(node, 1, "min"), arg(node, 2, "max")
    if any(isinstance(v, fx.Node) for v in (low, high)):
        raise unsupported(node, "tensor-valued clamp bounds")
    number = float if "float" in dtype_of(x) else int  # float(int64 max) would round past the int64 range
    info = np.finfo(dtype_of(x)) if number is float else np.iinfo(dtype_of(x))
    low, high = info.min if low is None else low, info.max if high is None else high
    return c.emit(relax.op.clip(x, number(low), number(high)))


def _pow(c: Converter, node: fx.Node) -> relax.Expr:
    """``x ** e``, with ``±0.5`` as (1 /) sqrt the way PyTorch computes them, so results match it bit for bit."""
    x, exponent = c.tensor(node.args[0]), node.args[1]
    if exponent in (0.5, -0.5):
        root = c.emit(relax.op.sqrt(x))
        return root if exponent > 0 else c.emit(relax.op.divide(relax.const(1.0, dtype_of(x)), root))
    return c.emit(relax.op.power(x, relax.const(exponent, dtype_of(x))))


TENSOR_CONVERTERS: ConverterMap = {
    aten.index.Tensor: _index,
    aten.index_put.default: _index_put,
    aten.index_put_.default: _index_put,
    aten.index_copy.default: _index_copy,
    aten.index_copy_.default: _index_copy,
    aten.slice.Tensor: _slice,
    aten.matmul.default: _matmul,
    aten.mm.default: _matmul,
    aten.bmm.default: _matmul,
    aten.where.self: _where,
    aten.masked_fill.Scalar: _masked_fill,
    aten.masked_fill_.Scalar: _masked_fill,
    aten.div.Tensor: _div,
    aten.div_.Tensor: _div,
    aten.leaky_relu.default: _leaky_relu,
    aten.softmax.int: _softmax,
    aten._softmax.default: _softmax,
    aten.sum.dim_IntList: _reduce,
    aten.mean.dim: _reduce,
    aten.sum.default: _reduce,
    aten.detach.default: _identity,
    aten.clone.default: _identity,
    aten.contiguous.default: _identity,
    aten.alias.default: _identity,
    aten.unsqueeze.default: _unsqueeze,
    aten.squeeze.dim: _squeeze,
    aten.squeeze.dims: _squeeze,
    aten.squeeze.default: _squeeze,
    aten.to.dtype: _to_dtype,
    aten._to_copy.default: _to_dtype,
    aten.repeat.default: _repeat,
    aten.cat.default: _cat,
    aten.stack.default: _stack,
    aten.split.Tensor: _split,
    aten.split_with_sizes.default: _split,
    operator.getitem: _getitem,
    aten.gru_cell.default: _gru_cell,
    aten.abs.default: unary(relax.op.abs),
    aten.neg.default: unary(relax.op.negative),
    aten.reciprocal.default: _reciprocal,
    aten.clamp.default: _clamp,
    aten.clamp_.default: _clamp,
    aten.pow.Tensor_Scalar: _pow,
    **{target: binary(op) for target, op in _COMPARISONS.items()},
    **{target: unary(op, float_only=True) for target, op in _FLOAT_UNARY.items()},
}

"""Converters of the TVM backend for the core float ATen ops of structure and feature programs (sizes, views, linear,
fills, scatters, batch norm): :data:`FLOAT_CONVERTERS` and :data:`MODULE_CONVERTERS`."""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import reduce

import numpy as np
import torch
import tvm
from torch import Tensor, fx
from tvm import relax, tirx

from ...ir.modes import ModeBatchNorm
from ...lowering.csr_aggregation import SCATTER_ADDS, ZERO_MAKERS
from ..fx_args import arg
from . import kernels as TK
from .kernel_calls import csr_aggregation, rows
from .schedule import static_extent as _static
from .translator import Converter, ConverterMap, Shape, dtype_of, normal_axis, shape_of, unsupported

aten = torch.ops.aten


# -- ATen ops -----------------------------------------------------------------------------------------------------
def _sym_size(c: Converter, node: fx.Node) -> tirx.PrimExpr:
    x, dim = node.args
    shape = shape_of(c.tensor(x))
    return shape[normal_axis(dim, len(shape))]


def _reshape(c: Converter, node: fx.Node) -> relax.Expr:
    x = c.tensor(node.args[0])
    shape = list(c.value(node.args[1]))
    if -1 in shape:
        numel = reduce(lambda a, b: a * b, shape_of(x), 1)
        known = reduce(lambda a, b: a * b, [d for d in shape if not (isinstance(d, int) and d == -1)], 1)
        shape[shape.index(-1)] = tvm.sym.Analyzer().simplify(tirx.floordiv(numel, known))
    return c.emit(relax.op.reshape(x, shape))


def _expand_as(c: Converter, node: fx.Node) -> relax.Expr:
    return c.emit(relax.op.broadcast_to(c.tensor(node.args[0]), shape_of(c.tensor(node.args[1]))))


def _index_select(c: Converter, node: fx.Node) -> relax.Expr:
    x, dim, index = node.args
    table = c.tensor(x)
    return c.emit(relax.op.take(table, c.tensor(index), axis=normal_axis(dim, len(shape_of(table)))))


def _select(c: Converter, node: fx.Node) -> relax.Expr:
    x, dim, index = node.args
    value = c.tensor(x)
    axis = normal_axis(dim, len(shape_of(value)))
    if index < 0:
        index = shape_of(value)[axis] + index
    return c.emit(relax.op.take(value, relax.const(index, "int64"), axis=axis))


def _relu(c: Converter, node: fx.Node) -> relax.Expr:
    return c.emit(relax.op.nn.relu(c.tensor(node.args[0])))


def _dropout(c: Converter, node: fx.Node) -> relax.Expr:
    if len(node.args) > 2 and node.args[2]:
        raise unsupported(node, "dropout in training mode; export a model in eval() mode")
    return c.tensor(node.args[0])


def binary(op: Callable, *, true_division: bool = False) -> Callable[[Converter, fx.Node], relax.Expr]:
    """An elementwise binary op with PyTorch's type promotion (``true_division``: integers divide in float32)."""

    def convert(c: Converter, node: fx.Node) -> relax.Expr:
        if node.kwargs.get("alpha", 1) != 1:
            raise unsupported(node, "alpha != 1")
        a, b = node.args[:2]
        dtype = _promoted(c, a, b)
        if true_division and not dtype.startswith("float"):
            dtype = "float32"
        va, vb = c.tensor(a, dtype), c.tensor(b, dtype)
        if not isinstance(a, fx.Node | Tensor) or not isinstance(b, fx.Node | Tensor):
            return c.emit(op(va, vb))
        out = c.emit(op(_aligned(c, va, _recorded_shape(a), shape_of(vb), _recorded_shape(b)), vb))
        if out.ty.shape is None:
            raise unsupported(node, "a broadcast between run-time sizes TVM cannot match")
        return out

    return convert


def _promoted(c: Converter, a: object, b: object) -> str:
    """PyTorch's result dtype of ``a op b`` (tensors, 0-d tensors and Python numbers)."""

    def operand(v: object) -> object:
        if not isinstance(v, fx.Node | Tensor):
            return v
        t = c.tensor(v)
        return torch.empty(() if not shape_of(t) else (1,), dtype=getattr(torch, dtype_of(t)))

    return str(torch.result_type(operand(a), operand(b))).removeprefix("torch.")


def _recorded_shape(arg: object) -> list[str] | None:
    """The operand's shape as PyTorch recorded it at capture (symbolic sizes as their names), if it was."""
    val = arg.meta.get("val") if isinstance(arg, fx.Node) else None
    return [str(d) for d in val.shape] if isinstance(val, Tensor) else None


def _aligned(c: Converter, value: relax.Expr, recorded: list[str] | None, other: Shape,
             other_recorded: list[str] | None) -> relax.Expr:  # fmt: skip
    """``value`` with each run-time size that equals ``other``'s at the same position from the right rebound to
    ``other``'s, so Relax can infer the shape of the result (e.g. edges kept by a mask times per-edge attention: two
    run-time sizes Relax cannot prove equal). Equal means: recorded by PyTorch as the same size (not 1), or, where a
    lowering pass left no record, a size computed without ``min``/``max`` (a slice's clamped length, e.g. ``h[:1]``,
    may be a broadcast 1 at run time: rebinding it crashed the program) against a size variable."""
    shape = shape_of(value)
    aligned, changed = list(shape), False
    for i in range(1, min(len(shape), len(other)) + 1):
        x, y = shape[-i], other[-i]
        if _static(x) is not None or isinstance(y, int) or x.same_as(y):
            continue
        if recorded is not None and other_recorded is not None and i <= min(len(recorded), len(other_recorded)):
            same = recorded[-i] == other_recorded[-i] != "1"
        else:
            same = isinstance(y, tirx.Var) and not _clamps(x)
        if same:
            aligned[-i], changed = y, True
    return c.bb.match_cast(value, relax.TensorType(aligned, dtype_of(value))) if changed else value


def _clamps(size: tirx.PrimExpr) -> bool:
    """Whether a size expression contains a ``min`` or ``max``."""
    if isinstance(size, tirx.Min | tirx.Max):
        return True
    return any(_clamps(getattr(size, part)) for part in ("a", "b") if hasattr(size, part))


def _linear(c: Converter, node: fx.Node) -> relax.Expr:
    x, weight = c.tensor(node.args[0]), node.args[1]
    bias = node.args[2] if len(node.args) > 2 else None
    w, b = c.array(weight), None if bias is None else c.array(bias)
    k = _static(shape_of(x)[-1])
    if w is not None and w.ndim == 2 and dtype_of(x) == "float32" and k is not None:
        if bias is None or b is not None:
            w_t = np.ascontiguousarray(w.T.astype(np.float32))
            bias_values = np.zeros(w.shape[0], np.float32) if b is None else b.astype(np.float32)
            return rows(c, x, lambda flat: _dense_f32(c, flat, w_t, bias_values))
    out = c.emit(relax.op.matmul(x, c.emit(relax.op.permute_dims(c.tensor(weight)))))
    return out if bias is None else c.emit(relax.op.add(out, c.tensor(bias)))


def _dense_f32(c: Converter, x: relax.Expr, w_t: np.ndarray, bias: np.ndarray) -> relax.Expr:
    k, o = w_t.shape
    args = [x, relax.const(TK.pad_columns(w_t)), relax.const(bias)]
    return c.call_kernel(TK.dense_f32(k, o), "dense_f32", args, [shape_of(x)[0], o], "float32")


_LIKE_MAKERS = (aten.new_zeros.default, aten.new_ones.default, aten.new_empty.default, aten.new_full.default)
_FILLS = {aten.new_ones.default: 1, aten.ones.default: 1, aten.new_full.default: None, aten.full.default: None}


def _filled(c: Converter, node: fx.Node) -> relax.Expr:
    """zeros / ones / full / empty (as zeros), fresh (``zeros(size)``) or like another tensor (``x.new_ones(size)``:
    a mean's row counts)."""
    recorded = node.meta.get("val")
    if node.target in _LIKE_MAKERS:
        like, size, *rest = node.args
        dtype = node.kwargs.get("dtype") or dtype_of(c.tensor(like))
    else:
        size, *rest = node.args
        dtype = node.kwargs.get("dtype") or (recorded.dtype if isinstance(recorded, Tensor) else torch.float32)
    dtype = str(dtype).removeprefix("torch.")
    fill = _FILLS.get(node.target, 0)
    fill = rest[0] if fill is None else fill
    return c.emit(relax.op.full(c.value(size), relax.const(fill, dtype), dtype))


def _arange(c: Converter, node: fx.Node) -> relax.Expr:
    """``arange`` with a symbolic end (PyG's self-loop node ids, ``arange(0, num_nodes)``)."""
    bounds = list(c.value(node.args))
    start, end, step = ([0, *bounds] if node.target == aten.arange.default else bounds + [1])[:3]
    recorded = node.meta.get("val")
    dtype = node.kwargs.get("dtype") or (recorded.dtype if isinstance(recorded, Tensor) else torch.int64)
    return c.emit(relax.op.arange(start, end, step, str(dtype).removeprefix("torch.")))


def _scatter_add(c: Converter, node: fx.Node) -> relax.Expr:
    base, dim, index, src = node.args[:4]
    if node.target == aten.scatter_add_.default and len(base.users) > 1:
        raise unsupported(node, "an in-place scatter_add_ on a tensor that is also read elsewhere")
    if node in c.aggregations:
        size = base.args[1] if base.target == aten.new_zeros.default else base.args[0]
        csr = csr_aggregation(c, c.aggregations[node], size, dtype_of(c.tensor(base)))
        if csr is not None:
            return csr
    values = c.tensor(base)
    return c.emit(relax.op.scatter_elements(values, c.tensor(index), c.tensor(src), axis=dim, reduction="add"))


def _max(c: Converter, node: fx.Node) -> relax.Expr:
    if len(node.args) > 1:
        raise unsupported(node, "only the maximum over all elements is supported")
    return c.emit(relax.op.max(c.tensor(node.args[0])))


def _item(c: Converter, node: fx.Node) -> tirx.PrimExpr:
    """A data-dependent size (e.g. the number of graphs, ``batch.max() + 1``): a fresh symbolic size bound to the
    tensor's value at run time, so the ops sized by it stay dynamic."""
    value = c.emit(relax.op.reshape(c.tensor(node.args[0], "int64"), [1]))
    size = tirx.Var(node.name, "int64")
    c.bb.match_cast(c.emit(relax.op.tensor_to_shape(value)), relax.ShapeType([size]))
    return size


def _sizes(op: Callable) -> Callable[[Converter, fx.Node], object]:
    def convert(c: Converter, node: fx.Node) -> object:
        return op(*c.value(node.args))

    return convert


def _batch_norm_module(c: Converter, node: fx.Node, module: ModeBatchNorm) -> relax.Expr:
    """A lowered program's batch norm (a float island: ``ModeBatchNorm(x, weight, bias, mean, var)``)."""
    return _batch_norm(c, node, *node.args, module.training, module.eps)


def _batch_norm_op(c: Converter, node: fx.Node) -> relax.Expr:
    """An FP32 program's batch norm: ``batch_norm(x, weight, bias, mean, var, training, momentum, eps, cudnn)``."""
    x, weight, bias, mean, var, training, _momentum, eps = node.args[:8]
    return _batch_norm(c, node, x, weight, bias, mean, var, training, eps)


def _batch_norm(c: Converter, node: fx.Node, x, weight, bias, mean, var, training: bool, eps: float) -> relax.Expr:
    """Inference batch norm as ``x * alpha + beta`` per channel (dim 1), the form of PyTorch's CPU inference
    kernel, with ``alpha = w / sqrt(var + eps)`` and ``beta = b - mean * alpha`` folded at export."""
    stats = [c.array(v) for v in (mean, var)]
    if training or any(v is None for v in stats):
        raise unsupported(node, "batch norm needs eval() mode and constant running statistics")
    value = c.tensor(x, "float32")
    channels = stats[0].shape[0]
    w = c.array(weight) if weight is not None else np.ones(channels, np.float32)
    b = c.array(bias) if bias is not None else np.zeros(channels, np.float32)
    if w is None or b is None:
        raise unsupported(node, "batch norm needs a constant weight and bias")
    alpha = (w / np.sqrt(stats[1] + np.float32(eps))).astype(np.float32)
    beta = (b - stats[0] * alpha).astype(np.float32)
    view = [channels] + [1] * (len(shape_of(value)) - 2)
    scaled = c.emit(relax.op.multiply(value, relax.const(alpha.reshape(view))))
    return c.emit(relax.op.add(scaled, relax.const(beta.reshape(view))))


_REDUCTIONS = {"sum": "add", "amax": "max", "amin": "min", "prod": "mul"}


def _scatter_reduce(c: Converter, node: fx.Node) -> relax.Expr:
    """``scatter_reduce`` (e.g. PyG's max pooling). With ``include_self=False`` the base value does not take part,
    and rows that receive nothing keep it: those rows are found with a count."""
    base, dim, index, src, reduce_op = node.args[:5]
    include_self = arg(node, 5, "include_self", True)
    if reduce_op not in _REDUCTIONS:
        raise unsupported(node, f"reduce={reduce_op!r}")
    if node.target == aten.scatter_reduce_.two and len(base.users) > 1:
        raise unsupported(node, "an in-place scatter_reduce_ on a tensor that is also read elsewhere")
    values, idx, updates = c.tensor(base), c.tensor(index), c.tensor(src)
    mode = _REDUCTIONS[reduce_op]
    if include_self:
        return c.emit(relax.op.scatter_elements(values, idx, updates, axis=dim, reduction=mode))
    if mode in ("max", "min"):  # start each touched row from one of its own values
        start = c.emit(relax.op.scatter_elements(values, idx, updates, axis=dim, reduction="update"))
    else:  # from the identity of the reduction
        start = c.emit((relax.op.zeros if mode == "add" else relax.op.ones)(shape_of(values), dtype_of(values)))
    reduced = c.emit(relax.op.scatter_elements(start, idx, updates, axis=dim, reduction=mode))
    counts = c.emit(
        relax.op.scatter_elements(
            c.emit(relax.op.zeros(shape_of(values), "int32")),
            idx,
            c.emit(relax.op.ones(shape_of(updates), "int32")),
            axis=dim,
            reduction="add",
        )
    )
    untouched = c.emit(relax.op.equal(counts, relax.const(0, "int32")))
    return c.emit(relax.op.where(untouched, values, reduced))


FLOAT_CONVERTERS: ConverterMap = {
    aten.sym_size.int: _sym_size,
    aten.view.default: _reshape,
    aten.reshape.default: _reshape,
    aten._unsafe_view.default: _reshape,
    aten.expand_as.default: _expand_as,
    aten.index_select.default: _index_select,
    aten.select.int: _select,
    aten.relu.default: _relu,
    aten.relu_.default: _relu,
    aten.dropout.default: _dropout,
    aten.feature_dropout.default: _dropout,
    aten.add.Tensor: binary(relax.op.add),
    aten.add_.Tensor: binary(relax.op.add),
    aten.sub.Tensor: binary(relax.op.subtract),
    aten.sub_.Tensor: binary(relax.op.subtract),
    aten.mul.Tensor: binary(relax.op.multiply),
    aten.mul_.Tensor: binary(relax.op.multiply),
    aten.linear.default: _linear,
    **dict.fromkeys(ZERO_MAKERS, _filled),
    **dict.fromkeys(_LIKE_MAKERS, _filled),
    aten.ones.default: _filled,
    aten.full.default: _filled,
    aten.arange.default: _arange,
    aten.arange.start: _arange,
    aten.arange.start_step: _arange,
    **dict.fromkeys(SCATTER_ADDS, _scatter_add),
    aten.max.default: _max,
    aten.amax.default: _max,
    aten.item.default: _item,
    operator.add: _sizes(operator.add),
    operator.sub: _sizes(operator.sub),
    operator.mul: _sizes(operator.mul),
    aten.batch_norm.default: _batch_norm_op,
    aten.scatter_reduce.two: _scatter_reduce,
    aten.scatter_reduce_.two: _scatter_reduce,
}

#: module type of a captured graph -> converter
MODULE_CONVERTERS = {ModeBatchNorm: _batch_norm_module}

"""Converters of the ``onnx`` backend for the core float ATen ops of structure and feature programs (arithmetic,
comparisons, reductions, linear, batch norm, scatters): :data:`FLOAT_CONVERTERS` and :data:`MODULE_CONVERTERS`."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor, fx

from ...ir.modes import ModeBatchNorm, ModeDropout
from ..fx_args import arg
from .activations import inverse_sqrt, unary
from .graph import OnnxGraph, Value, result_dtype, unsupported
from .scatter import row_index, scatter_into_zeros, scatter_select, segment_sum

aten = torch.ops.aten


def _elementwise(op_type: str, *, boolean: bool = False) -> Callable[[OnnxGraph, fx.Node], Value]:
    """A binary op with PyTorch's type promotion (a Python scalar takes the tensor's dtype)."""

    def convert(g: OnnxGraph, node: fx.Node) -> Value:
        a, b = node.args[:2]
        alpha = node.kwargs.get("alpha", 1)
        if _is_size(g, a) and _is_size(g, b):
            return _size_arith(g, op_type, a, b)
        dtype = result_dtype(g, node, (a, b)) if not boolean else None
        operand_dtype = dtype or torch.promote_types(*(_arg_dtype(g, x) for x in (a, b)))
        va, vb = (g.cast(g.value(x, Value("", operand_dtype)), operand_dtype) for x in (a, b))
        if alpha != 1:
            vb = g.emit("Mul", [vb.name, g.const(alpha, operand_dtype)], operand_dtype)
        if op_type == "NotEqual":
            equal = g.emit("Equal", [va.name, vb.name], torch.bool)
            return g.emit("Not", [equal.name], torch.bool)
        return g.emit(op_type, [va.name, vb.name], torch.bool if boolean else dtype)

    convert.__doc__ = f"Elementwise {op_type}."
    return convert


def _arg_dtype(g: OnnxGraph, arg) -> torch.dtype:
    if isinstance(arg, fx.Node):
        return g.value(arg).plain_dtype
    return torch.float32 if isinstance(arg, float) else torch.int64


def _is_size(g: OnnxGraph, arg) -> bool:
    """A Python-level integer: a symbolic size or an int literal next to one."""
    if isinstance(arg, fx.Node):
        found = g.env.get(arg)
        return isinstance(found, Value) and found.symbolic
    return isinstance(arg, int)


def _size_arith(g: OnnxGraph, op_type: str, a, b) -> Value:
    va, vb = g.ints(a), g.ints(b)
    return replace(g.emit(op_type, [va.name, vb.name], torch.int64), symbolic=True)


def _sym_operator(op_type: str) -> Callable[[OnnxGraph, fx.Node], Value]:
    def convert(g: OnnxGraph, node: fx.Node) -> Value:
        return _size_arith(g, op_type, *node.args)

    convert.__doc__ = f"{op_type} of two sizes (Python ints of the traced program)."
    return convert


def _identity(g: OnnxGraph, node: fx.Node) -> Value:
    return g.value(node.args[0])


def _to_dtype(g: OnnxGraph, node: fx.Node) -> Value:
    """``x.to(dtype)`` / ``_to_copy(x, dtype=...)``: a cast (the identity without a dtype)."""
    dtype = arg(node, 1, "dtype") if node.target == aten.to.dtype else node.kwargs.get("dtype")
    x = g.value(node.args[0])
    return x if dtype is None else g.cast(x, dtype)


def _dropout(g: OnnxGraph, node: fx.Node) -> Value:
    if arg(node, 2, "train", False):
        raise unsupported(node, "dropout in training mode; export a model in eval mode")
    return g.value(node.args[0])


def _leaky_relu(g: OnnxGraph, node: fx.Node) -> Value:
    x = g.value(node.args[0])
    return g.emit("LeakyRelu", [x.name], x.dtype, alpha=float(arg(node, 1, "negative_slope", 0.01)))


def _pow(g: OnnxGraph, node: fx.Node) -> Value:
    """``x ** e``: ``-0.5`` as ``1 / sqrt(x)`` and ``0.5`` as ``sqrt(x)``, the way PyTorch computes them (gcn_norm
    degrees), so edge weights match the reference bit for bit; other exponents use ``Pow``."""
    x, exponent = node.args
    x = g.value(x)
    if exponent == -0.5:
        return inverse_sqrt(g, x)
    if exponent == 0.5:
        return g.emit("Sqrt", [x.name], x.dtype)
    return g.emit("Pow", [x.name, g.const(exponent, x.dtype)], x.dtype)


def _clamp(g: OnnxGraph, node: fx.Node) -> Value:
    x = g.plain(g.value(node.args[0]))
    low, high = arg(node, 1, "min"), arg(node, 2, "max")
    names = [x.name] + ["" if v is None else g.value(v, x).name for v in (low, high)]
    return g.emit("Clip", names, x.dtype)


def _masked_fill(g: OnnxGraph, node: fx.Node) -> Value:
    x, mask, fill = node.args
    x = g.plain(g.value(x))
    return g.emit("Where", [g.value(mask).name, g.value(fill, x).name, x.name], x.dtype)


def _where(g: OnnxGraph, node: fx.Node) -> Value:
    cond, a, b = node.args
    dtype = result_dtype(g, node, (a, b))
    va, vb = (g.cast(g.value(x, Value("", dtype)), dtype) for x in (a, b))
    return g.emit("Where", [g.value(cond).name, va.name, vb.name], dtype)


def _linear(g: OnnxGraph, node: fx.Node) -> Value:
    """Float ``x @ W^T + b``; a constant weight is stored transposed."""
    x, weight = g.value(node.args[0]), node.args[1]
    bias = arg(node, 2, "bias")
    if weight in g.consts:
        w_t = g.initializer(g.consts[weight].t().contiguous().numpy(), f"{weight.target}_t")
    else:
        w_t = g.emit("Transpose", [g.value(weight).name], torch.float32, perm=[1, 0]).name
    out = g.emit("MatMul", [x.name, w_t], torch.float32)
    if bias is None:
        return out
    return g.emit("Add", [out.name, g.value(bias).name], torch.float32)


def _matmul(g: OnnxGraph, node: fx.Node) -> Value:
    """Float ``matmul``/``mm``/``bmm`` (numpy semantics in both; e.g. ARMA's and GatedGraphConv's per-stack
    weights, which stay in float where the integer lowering does not cover their 3-D weight)."""
    a, b = (g.cast(g.value(x), torch.float32) for x in node.args[:2])
    return g.emit("MatMul", [a.name, b.name], torch.float32)


def _softmax(g: OnnxGraph, node: fx.Node) -> Value:
    x = g.cast(g.value(node.args[0]), torch.float32)
    return g.emit("Softmax", [x.name], torch.float32, axis=node.args[1])


def batch_norm_module(g: OnnxGraph, node: fx.Node, module: ModeBatchNorm) -> Value:
    """Inference batch norm over dim 1 (running statistics), from a :class:`ModeBatchNorm` call."""
    return _batch_norm_eval(g, node, node.args[:5], module.eps)


def _aten_batch_norm(g: OnnxGraph, node: fx.Node) -> Value:
    """``aten.batch_norm`` of an FP32 program (captured in eval mode)."""
    if arg(node, 5, "training", False):
        raise unsupported(node, "batch norm in training mode; export a model in eval mode")
    return _batch_norm_eval(g, node, node.args[:5], float(arg(node, 7, "eps", 1e-5)))


def _batch_norm_eval(g: OnnxGraph, node: fx.Node, args: Sequence, eps: float) -> Value:
    x, weight, bias, mean, var = (g.value(a) if a is not None else None for a in args)
    if mean is None or var is None:
        raise unsupported(node, "batch norm without running statistics")
    channels = g.emit("Shape", [mean.name], torch.int64)
    weight = weight or g.emit("Expand", [g.const(1.0, torch.float32), channels.name], torch.float32)
    bias = bias or g.emit("Expand", [g.const(0.0, torch.float32), channels.name], torch.float32)
    names = [x.name, weight.name, bias.name, mean.name, var.name]
    return g.emit("BatchNormalization", names, torch.float32, epsilon=eps)


def _sym_size(g: OnnxGraph, node: fx.Node) -> Value:
    x, dim = node.args
    shape = g.shape(g.value(x))
    return replace(g.emit("Gather", [shape.name, g.const([dim], torch.int64)], torch.int64), symbolic=True)


def _item(g: OnnxGraph, node: fx.Node) -> Value:
    x = g.cast(g.value(node.args[0]), torch.int64)
    return replace(g.emit("Reshape", [x.name, g.const([1], torch.int64)], torch.int64), symbolic=True)


def _reduce(op_type: str) -> Callable[[OnnxGraph, fx.Node], Value]:
    def convert(g: OnnxGraph, node: fx.Node) -> Value:
        x = g.plain(g.value(node.args[0]))
        dims = arg(node, 1, "dim")
        dims = None if isinstance(dims, list | tuple) and not dims else dims  # dim=[]: every dim, as no dim
        keepdim = int(bool(arg(node, 2, "keepdim", False)))
        dtype = node.kwargs.get("dtype") or (torch.int64 if op_type == "ReduceSum" and x.dtype == torch.bool else None)
        if dtype is not None:  # a sum of booleans counts them (int64), as an explicit dtype does
            x = g.cast(x, dtype)
        inputs = [x.name] if dims is None else [x.name, g.const(list(dims) if isinstance(dims, list | tuple)
                                                                 else [dims], torch.int64)]  # fmt: skip
        return g.emit(op_type, inputs, x.dtype, keepdims=keepdim)

    convert.__doc__ = f"{op_type} over the given dims (all dims when none are given)."
    return convert


def _gru_cell(g: OnnxGraph, node: fx.Node) -> Value:
    """``gru_cell(x, h, W_ih, W_hh, b_ih, b_hh)`` (GatedGraphConv's update) from MatMul/Sigmoid/Tanh, in PyTorch's
    gate order (reset, update, new): ``h' = (1 - z) * n + z * h``."""
    x, h = (g.cast(g.value(v), torch.float32) for v in node.args[:2])
    w_ih, w_hh = (g.consts.get(w) for w in node.args[2:4])
    if w_ih is None or w_hh is None:
        raise unsupported(node, "a GRU cell with weights computed at run time")
    biases = [arg(node, i, n) for i, n in ((4, "b_ih"), (5, "b_hh"))]

    def gates(value: Value, weight: Tensor, bias) -> list[str]:
        out = g.emit("MatMul", [value.name, g.initializer(weight.t().contiguous().numpy(), "gru_w")], torch.float32)
        if bias is not None:
            out = g.emit("Add", [out.name, g.value(bias).name], torch.float32)
        first = g.emit("Split", [out.name], torch.float32, outputs=3, axis=-1, num_outputs=3)
        return [first.name, f"{first.name}_1", f"{first.name}_2"]

    (ir, iz, in_), (hr, hz, hn) = gates(x, w_ih, biases[0]), gates(h, w_hh, biases[1])
    r = g.emit("Sigmoid", [g.emit("Add", [ir, hr], torch.float32).name], torch.float32)
    z = g.emit("Sigmoid", [g.emit("Add", [iz, hz], torch.float32).name], torch.float32)
    n = g.emit("Tanh", [g.emit("Add", [in_, g.emit("Mul", [r.name, hn], torch.float32).name], torch.float32).name],
               torch.float32)  # fmt: skip
    keep = g.emit("Mul", [z.name, h.name], torch.float32)
    new = g.emit("Mul", [g.emit("Sub", [g.const(1.0, torch.float32), z.name], torch.float32).name, n.name],
                 torch.float32)  # fmt: skip
    return g.emit("Add", [new.name, keep.name], torch.float32)


def _scatter_add(g: OnnxGraph, node: fx.Node) -> Value:
    """Float scatter-add: into fresh zeros by a row index it is a segment sum (float64 prefix sums), otherwise
    ``ScatterElements(reduction="add")`` on the base."""
    base, dim, index, src = node.args
    base_value, messages = g.value(base), g.value(src)
    if _is_zeros(base) and dim == 0 and row_index(g, index, src) is not None:
        return scatter_into_zeros(g, messages, index, src, base.args[1] if base.target != aten.zeros.default
                                   else base.args[0], dim)  # fmt: skip
    return g.emit("ScatterElements", [base_value.name, g.value(index).name, messages.name], base_value.dtype,
                  axis=dim, reduction="add")  # fmt: skip


def _index_add(g: OnnxGraph, node: fx.Node) -> Value:
    base, dim, index, src = node.args[:4]
    if dim != 0:
        raise unsupported(node, f"index_add along dim {dim}; only dim 0 is translated")
    base_value = g.value(base)
    num_rows = g.emit("Gather", [g.shape(base_value).name, g.const([0], torch.int64)], torch.int64)
    total = segment_sum(g, g.value(src), g.cast(g.value(index), torch.int64), num_rows)
    if _is_zeros(base):
        return total
    return g.emit("Add", [base_value.name, total.name], base_value.dtype)


def _is_zeros(node) -> bool:
    return isinstance(node, fx.Node) and node.target in (aten.new_zeros.default, aten.zeros.default)


def _scatter_reduce(g: OnnxGraph, node: fx.Node) -> Value:
    base, dim, index, src, reduce = node.args[:5]
    include_self = arg(node, 5, "include_self", True)
    if reduce == "sum" and (_is_zeros(base) or include_self):
        return _scatter_add(g, node)
    if reduce in ("amax", "amin"):
        if include_self:
            kind = {"amax": "max", "amin": "min"}[reduce]
            base_value = g.value(base)
            return g.emit("ScatterElements", [base_value.name, g.value(index).name, g.value(src).name],
                          base_value.dtype, axis=dim, reduction=kind)  # fmt: skip
        if _is_zeros(base):
            return scatter_select(g, g.value(base), g.value(index), g.value(src), dim, reduce)
    raise unsupported(node, f"scatter_reduce {reduce!r} with include_self={include_self}")


#: aten comparison -> ONNX op (each in its Tensor and Scalar overload).
_COMPARISONS = {
    "eq": "Equal",
    "ne": "NotEqual",
    "lt": "Less",
    "le": "LessOrEqual",
    "gt": "Greater",
    "ge": "GreaterOrEqual",
}


def _dropout_module(g: OnnxGraph, node: fx.Node, module: ModeDropout) -> Value:
    return g.value(node.args[0])


#: ATen op -> converter
FLOAT_CONVERTERS: dict[object, Callable[[OnnxGraph, fx.Node], Value]] = {
    operator.add: _sym_operator("Add"),
    operator.sub: _sym_operator("Sub"),
    operator.mul: _sym_operator("Mul"),
    aten.sym_size.int: _sym_size,
    aten.item.default: _item,
    aten.add.Tensor: _elementwise("Add"),
    aten.add_.Tensor: _elementwise("Add"),
    aten.sub.Tensor: _elementwise("Sub"),
    aten.sub_.Tensor: _elementwise("Sub"),
    aten.div_.Tensor: _elementwise("Div"),
    aten.mul.Tensor: _elementwise("Mul"),
    aten.mul_.Tensor: _elementwise("Mul"),
    aten.div.Tensor: _elementwise("Div"),
    **{
        getattr(getattr(aten, name), kind): _elementwise(op_type, boolean=True)
        for name, op_type in _COMPARISONS.items()
        for kind in ("Tensor", "Scalar")
    },
    aten.pow.Tensor_Scalar: _pow,
    aten.pow_.Scalar: _pow,
    aten.relu.default: unary("Relu"),
    aten.relu_.default: unary("Relu"),
    aten.sigmoid.default: unary("Sigmoid", float_only=True),
    aten.exp.default: unary("Exp", float_only=True),
    aten.log.default: unary("Log", float_only=True),
    aten.sqrt.default: unary("Sqrt", float_only=True),
    aten.abs.default: unary("Abs"),
    aten.neg.default: unary("Neg"),
    aten.reciprocal.default: unary("Reciprocal", float_only=True),
    aten.tanh.default: unary("Tanh", float_only=True),
    aten.leaky_relu.default: _leaky_relu,
    aten.clamp.default: _clamp,
    aten.clamp_.default: _clamp,
    aten.softmax.int: _softmax,
    aten._softmax.default: _softmax,
    aten.matmul.default: _matmul,
    aten.mm.default: _matmul,
    aten.bmm.default: _matmul,
    aten.masked_fill.Scalar: _masked_fill,
    aten.masked_fill_.Scalar: _masked_fill,
    aten.where.self: _where,
    aten.linear.default: _linear,
    aten.batch_norm.default: _aten_batch_norm,
    aten.dropout.default: _dropout,
    aten.feature_dropout.default: _dropout,
    aten.detach.default: _identity,
    aten.to.dtype: _to_dtype,
    aten._to_copy.default: _to_dtype,
    aten.clone.default: _identity,
    aten.contiguous.default: _identity,
    aten.alias.default: _identity,
    aten.sum.dim_IntList: _reduce("ReduceSum"),
    aten.mean.dim: _reduce("ReduceMean"),
    aten.max.default: _reduce("ReduceMax"),
    aten.gru_cell.default: _gru_cell,
    aten.scatter_add.default: _scatter_add,
    aten.scatter_add_.default: _scatter_add,
    aten.index_add.default: _index_add,
    aten.index_add_.default: _index_add,
    aten.scatter_reduce.two: _scatter_reduce,
    aten.scatter_reduce_.two: _scatter_reduce,
}

#: module type of a captured graph -> converter
MODULE_CONVERTERS = {ModeDropout: _dropout_module, ModeBatchNorm: batch_norm_module}

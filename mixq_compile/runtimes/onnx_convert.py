"""Converters of the ``onnx`` backend: one per instruction of :mod:`mixq_compile.integer.kernels` and per ATen op
that appears in structure and feature programs (:data:`CONVERTERS`), chosen for what is exact *and* fast on
onnxruntime's CPU kernels (see :mod:`mixq_compile.runtimes.onnx_ort` for the choices). Ops that only move, index or
build tensors are in :mod:`mixq_compile.runtimes.onnx_tensor_ops` and merged into :data:`CONVERTERS`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from onnx import TensorProto, numpy_helper
from torch import Tensor, fx

from ..integer import kernels as K
from ..passes.train_mode import ModeBatchNorm, ModeDropout
from .fx_args import arg
from .onnx_activations import ACTIVATION_CONVERTERS, inverse_sqrt, unary
from .onnx_graph import (
    CODE_OFFSET,
    Converters,
    OnnxConversionError,
    OnnxGraph,
    Value,
    result_dtype,
    unsupported,
)
from .onnx_tensor_ops import TENSOR_CONVERTERS

aten = torch.ops.aten


# ----------------------------------------------------------------------------------------------------------------
# integer instructions (mixq_compile.integer.kernels)
# ----------------------------------------------------------------------------------------------------------------
def _per_axis(tensor: Tensor) -> tuple[np.ndarray, int | None]:
    """A broadcastable scale/zero tensor as ONNX Q/DQ wants it: a scalar, or 1-D along one axis (negative)."""
    if tensor.numel() == 1:
        return tensor.reshape(()).numpy(), None
    axes = [d for d in range(tensor.dim()) if tensor.shape[d] != 1]
    if len(axes) != 1:
        raise OnnxConversionError(f"scale/zero of shape {tuple(tensor.shape)} varies along more than one axis")
    return tensor.reshape(-1).numpy(), axes[0] - tensor.dim()


def _to_codes(g: OnnxGraph, real: Value, zero: Tensor, qmin: int, qmax: int) -> Value:
    """``clamp(round(real) + zero, qmin, qmax)`` in the container of ``[qmin, qmax]`` (``real`` already scaled).

    int8 containers: one ``QuantizeLinear`` with scale 1 and zero-point ``zero + 128`` (round half to even, as
    ``torch.round``; saturation to uint8 is the int8 clamp) then a ``Clip`` for narrower grids.
    """
    container = K.container_dtype(qmin, qmax)
    if container == torch.int8:
        zeros, axis = _per_axis(zero.to(torch.int32) + CODE_OFFSET)
        ones = np.ones_like(zeros, dtype=np.float32)
        attrs = {} if axis is None else {"axis": axis}
        names = [real.name, g.initializer(ones), g.initializer(zeros.astype(np.uint8))]
        codes = g.emit("QuantizeLinear", names, torch.uint8, offset=True, **attrs)
        if (qmin, qmax) != (-128, 127):
            low, high = g.const(qmin + CODE_OFFSET, torch.uint8), g.const(qmax + CODE_OFFSET, torch.uint8)
            codes = g.emit("Clip", [codes.name, low, high], torch.uint8, offset=True)
        return codes
    rounded = g.emit("Round", [real.name], torch.float32)
    shifted = g.emit("Add", [rounded.name, g.const(zero, torch.float32)], torch.float32)
    clipped = g.emit("Clip", [shifted.name, g.const(qmin, torch.float32), g.const(qmax, torch.float32)],
                     torch.float32)  # fmt: skip
    return g.cast(clipped, container)


def _quantize(g: OnnxGraph, node: fx.Node) -> Value:
    """``clamp(round(x / scale + zero))``: with zero 0, ``QuantizeLinear(x, scale)`` itself (ORT divides, as the
    reference does); otherwise the division and the float add happen first, exactly as in the reference."""
    x, scale_node, zero_node, qmin, qmax = node.args
    x = g.cast(g.value(x), torch.float32)
    scale, zero = g.consts[scale_node], g.consts[zero_node]
    container = K.container_dtype(qmin, qmax)
    if container == torch.int8 and not zero.any():
        scales, axis = _per_axis(scale.float())
        zeros = np.full_like(scales, CODE_OFFSET, dtype=np.uint8)
        attrs = {} if axis is None else {"axis": axis}
        codes = g.emit("QuantizeLinear", [x.name, g.initializer(scales), g.initializer(zeros)], torch.uint8,
                       offset=True, **attrs)  # fmt: skip
        if (qmin, qmax) != (-128, 127):
            low, high = g.const(qmin + CODE_OFFSET, torch.uint8), g.const(qmax + CODE_OFFSET, torch.uint8)
            codes = g.emit("Clip", [codes.name, low, high], torch.uint8, offset=True)
        return codes
    scaled = g.emit("Div", [x.name, g.const(scale, torch.float32)], torch.float32)
    shifted = g.emit("Add", [scaled.name, g.const(zero, torch.float32)], torch.float32)
    return _to_codes(g, shifted, torch.zeros_like(zero), qmin, qmax)


def _dequantize(g: OnnxGraph, node: fx.Node) -> Value:
    """``scale * (q - zero)``: one ``DequantizeLinear`` (it subtracts in integers, then multiplies in float)."""
    q_node, scale_node, zero_node = node.args
    q = g.value(q_node)
    scale, zero = g.consts[scale_node].float(), g.consts[zero_node].to(torch.int32)
    if q.dtype not in (torch.uint8, torch.int8, torch.int16):
        q = g.cast(q, torch.int32)
        centered = g.emit("Sub", [q.name, g.const(zero, torch.int32)], torch.int32)
        real = g.emit("Cast", [centered.name], torch.float32, to=TensorProto.FLOAT)
        return g.emit("Mul", [real.name, g.const(scale, torch.float32)], torch.float32)
    zero = zero + CODE_OFFSET if q.offset else zero
    if scale.numel() > 1 and zero.numel() == 1:
        zero = zero.expand(scale.shape)
    if zero.numel() > 1 and scale.numel() == 1:
        scale = scale.expand(zero.shape)
    scales, axis = _per_axis(scale.contiguous())
    zeros, _ = _per_axis(zero.contiguous())
    attrs = {} if axis is None else {"axis": axis}
    names = [q.name, g.initializer(scales), g.const(zeros, q.dtype)]
    return g.emit("DequantizeLinear", names, torch.float32, **attrs)


def _dequantize_acc(g: OnnxGraph, node: fx.Node) -> Value:
    acc, scale_node = node.args
    real = g.cast(g.value(acc), torch.float32)
    return g.emit("Mul", [real.name, g.const(g.consts[scale_node], torch.float32)], torch.float32)


def _center(g: OnnxGraph, node: fx.Node) -> Value:
    """``q - zero`` in int32. Centering gathered messages (``center(index_select(q, idx))``, one message per edge)
    is done on the node codes before the gather, which is the same value with E/N times fewer casts and subtracts."""
    source, zero_node = node.args
    zero = g.consts[zero_node]
    if _gathers_rows_for(source, node) and zero.numel() == 1:
        codes, dim, index = source.args
        centered = _centered(g, g.value(codes), zero)
        return g.emit("Gather", [centered.name, g.value(index).name], torch.int32, axis=dim)
    return _centered(g, g.value(source), zero)


def _gathers_rows_for(source, user: fx.Node) -> bool:
    """``source`` is an ``index_select`` read only by ``user``."""
    return isinstance(source, fx.Node) and source.target == aten.index_select.default and list(source.users) == [user]


def _centered(g: OnnxGraph, q: Value, zero: Tensor) -> Value:
    zero = zero.to(torch.int32) + (CODE_OFFSET if q.offset else 0)
    wide = g.emit("Cast", [q.name], torch.int32, to=TensorProto.INT32) if q.dtype != torch.int32 else q
    if not zero.any():
        return wide
    return g.emit("Sub", [wide.name, g.const(zero, torch.int32)], torch.int32)


def _requantize(g: OnnxGraph, node: fx.Node) -> Value:
    """``clamp(round(acc * M) + zero)``: float product as in the reference, then :func:`_to_codes`."""
    acc, multiplier, zero, qmin, qmax = node.args
    real = g.cast(g.value(acc), torch.float32)
    scaled = g.emit("Mul", [real.name, g.const(g.consts[multiplier], torch.float32)], torch.float32)
    return _to_codes(g, scaled, g.consts[zero], qmin, qmax)


def _requantize_fixed_point(g: OnnxGraph, node: fx.Node) -> Value:
    """``clamp(((acc * mantissa + 2**(shift-1)) >> shift) + zero)`` in int64. ONNX's BitShift is unsigned-only, so
    the arithmetic shift is a floor division: ``(a - (a mod 2**s)) / 2**s`` with a non-negative ``mod``."""
    acc, mantissa, shift, zero, qmin, qmax = node.args
    shift_t = g.consts[shift].to(torch.int64)
    product = g.emit("Mul", [g.cast(g.value(acc), torch.int64).name, g.const(g.consts[mantissa], torch.int64)],
                     torch.int64)  # fmt: skip
    biased = g.emit("Add", [product.name, g.const(1 << (shift_t - 1), torch.int64)], torch.int64)
    divisor = g.const(1 << shift_t, torch.int64)
    remainder = g.emit("Mod", [biased.name, divisor], torch.int64, fmod=0)
    exact = g.emit("Sub", [biased.name, remainder.name], torch.int64)
    rounded = g.emit("Div", [exact.name, divisor], torch.int64)
    shifted = g.emit("Add", [rounded.name, g.const(g.consts[zero], torch.int64)], torch.int64)
    clipped = g.emit("Clip", [shifted.name, g.const(qmin, torch.int64), g.const(qmax, torch.int64)], torch.int64)
    codes = g.cast(clipped, K.container_dtype(qmin, qmax))
    return g.as_offset(codes) if codes.dtype == torch.int8 else codes


def _relu_codes(g: OnnxGraph, node: fx.Node) -> Value:
    q = g.value(node.args[0])
    zero = g.consts[node.args[1]].to(torch.int32) + (CODE_OFFSET if q.offset else 0)
    return replace(g.emit("Max", [q.name, g.const(zero, q.dtype)], q.dtype), offset=q.offset)


def _linear_int(g: OnnxGraph, node: fx.Node) -> Value:
    """``(q_x - z_x) @ W^T + bias`` in int32. Offset codes and int8 weights: ``MatMulInteger`` with the x
    zero-point as ``a_zero_point`` (u8 x s8, the fast path), so ``w_sum`` is not needed. Wider codes or weights:
    an int32 ``MatMul`` on centered codes."""
    q_node, zero_node, w_node, _w_sum, bias_node = node.args
    q, w = g.value(q_node), g.value(w_node)
    zero = g.consts[zero_node].to(torch.int32)
    if q.offset and w.dtype == torch.int8:
        a_zero = g.const(zero + CODE_OFFSET, torch.uint8)
        acc = g.emit("MatMulInteger", [q.name, w.name, a_zero], torch.int32)
    else:
        centered = g.emit("Sub", [g.cast(q, torch.int32).name, g.const(zero, torch.int32)], torch.int32)
        acc = g.emit("MatMul", [centered.name, g.cast(w, torch.int32).name], torch.int32)
    if bias_node is None:
        return acc
    return g.emit("Add", [acc.name, g.value(bias_node).name], torch.int32)


def _binary_int(op_type: str) -> Callable[[OnnxGraph, fx.Node], Value]:
    def convert(g: OnnxGraph, node: fx.Node) -> Value:
        a, b = (g.cast(g.value(x), torch.int32) for x in node.args)
        return g.emit(op_type, [a.name, b.name], torch.int32)

    convert.__doc__ = f"int32 {op_type} of two accumulators."
    return convert


def _row_index(g: OnnxGraph, index: fx.Node, src: fx.Node) -> Value | None:
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


def _segment_sum(g: OnnxGraph, messages: Value, rows: Value, num_rows: Value) -> Value:
    """``out[r] = Σ_{e: rows[e] = r} messages[e]`` by a sorted prefix sum (see module docstring).

    Everything except the message gather, the prefix sum and the final differences depends only on ``rows`` and
    ``num_rows``, so the hoisting pass moves it to the structure graph.
    """
    acc_dtype = torch.float64 if messages.dtype.is_floating_point else torch.int32
    count = g.shape(rows)
    order = g.emit("TopK", [rows.name, count.name], torch.int64, outputs=2, largest=0, sorted=1)
    permutation = Value(f"{order.name}_1", torch.int64)
    ones = g.emit("Expand", [g.const(1, torch.int64), count.name], torch.int64)
    empty = _zeros(g, num_rows, torch.int64)
    per_row = g.emit("ScatterElements", [empty.name, rows.name, ones.name], torch.int64, axis=0, reduction="add")
    ends = g.emit("CumSum", [per_row.name, g.const(0, torch.int64)], torch.int64)
    starts = g.emit("Sub", [ends.name, per_row.name], torch.int64)
    last = g.emit("Sub", [ends.name, g.const(1, torch.int64)], torch.int64)
    before = g.emit("Sub", [starts.name, g.const(1, torch.int64)], torch.int64)
    first_row = g.emit("Equal", [starts.name, g.const(0, torch.int64)], torch.bool)
    sorted_messages = g.emit("Gather", [g.cast(messages, acc_dtype).name, permutation.name], acc_dtype, axis=0)
    prefix = g.emit("CumSum", [sorted_messages.name, g.const(0, torch.int64)], acc_dtype)
    upto_last = g.emit("Gather", [prefix.name, last.name], acc_dtype, axis=0)
    upto_before = g.emit("Gather", [prefix.name, before.name], acc_dtype, axis=0)
    mask = _broadcast_column(g, first_row, upto_before)
    before_sum = g.emit("Where", [mask.name, g.const(0, acc_dtype), upto_before.name], acc_dtype)
    total = g.emit("Sub", [upto_last.name, before_sum.name], acc_dtype)
    return g.cast(total, messages.dtype) if acc_dtype != messages.dtype else total


def _broadcast_column(g: OnnxGraph, column: Value, like: Value) -> Value:
    """A 1-D per-row tensor reshaped to ``[R, 1, ..., 1]`` with the rank of ``like``."""
    rank = g.emit("Size", [g.shape(like).name], torch.int64)
    trailing = g.emit("Sub", [rank.name, g.const(1, torch.int64)], torch.int64)
    ones = g.emit("Expand", [g.const([1], torch.int64), g.emit("Reshape", [trailing.name, g.const([1], torch.int64)],
                  torch.int64).name], torch.int64)  # fmt: skip
    shape = g.emit("Concat", [g.const([-1], torch.int64), ones.name], torch.int64, axis=0)
    return g.emit("Reshape", [column.name, shape.name], column.dtype)


def _zeros(g: OnnxGraph, size, dtype: torch.dtype) -> Value:
    """Zeros of a (possibly symbolic) size."""
    value = numpy_helper.from_array(np.zeros(1, dtype=torch.empty(0, dtype=dtype).numpy().dtype))
    return g.emit("ConstantOfShape", [g.ints(size).name], dtype, value=value)


def _scatter_into_zeros(g: OnnxGraph, messages: Value, index: fx.Node, src: fx.Node, size, dim: int) -> Value:
    """Sum-scatter ``messages`` into zeros of ``size``: a segment sum for row scatters, else ScatterElements."""
    rows = _row_index(g, index, src) if dim == 0 else None
    if rows is not None:
        num_rows = g.emit("Slice", [g.ints(size).name, g.const([0], torch.int64), g.const([1], torch.int64)],
                          torch.int64)  # fmt: skip
        return _segment_sum(g, messages, rows, num_rows)
    zeros = _zeros(g, size, messages.dtype)
    return g.emit("ScatterElements", [zeros.name, g.value(index).name, messages.name], messages.dtype, axis=dim,
                  reduction="add")  # fmt: skip


def _scatter_sum_int(g: OnnxGraph, node: fx.Node) -> Value:
    acc, dim, index, size = node.args
    return _scatter_into_zeros(g, g.cast(g.value(acc), torch.int32), index, acc, size, dim)


def _index_sum_int(g: OnnxGraph, node: fx.Node) -> Value:
    acc, dim, index, size = node.args
    if dim != 0:
        raise unsupported(node, f"index_add along dim {dim}; only dim 0 is translated")
    rows = g.cast(g.value(index), torch.int64)
    num_rows = g.emit("Slice", [g.ints(size).name, g.const([0], torch.int64), g.const([1], torch.int64)], torch.int64)
    return _segment_sum(g, g.cast(g.value(acc), torch.int32), rows, num_rows)


def _scatter_select(g: OnnxGraph, base: Value, index: Value, src: Value, dim: int, reduce: str) -> Value:
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


def _scatter_select_int(g: OnnxGraph, node: fx.Node) -> Value:
    acc, dim, index, size, reduce = node.args
    base = _zeros(g, size, torch.int32)
    return _scatter_select(g, base, g.value(index), g.cast(g.value(acc), torch.int32), dim, reduce)


# ----------------------------------------------------------------------------------------------------------------
# ATen ops (float parts, FP32 programs, structure programs)
# ----------------------------------------------------------------------------------------------------------------
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
    if _is_zeros(base) and dim == 0 and _row_index(g, index, src) is not None:
        return _scatter_into_zeros(g, messages, index, src, base.args[1] if base.target != aten.zeros.default
                                   else base.args[0], dim)  # fmt: skip
    return g.emit("ScatterElements", [base_value.name, g.value(index).name, messages.name], base_value.dtype,
                  axis=dim, reduction="add")  # fmt: skip


def _index_add(g: OnnxGraph, node: fx.Node) -> Value:
    base, dim, index, src = node.args[:4]
    if dim != 0:
        raise unsupported(node, f"index_add along dim {dim}; only dim 0 is translated")
    base_value = g.value(base)
    num_rows = g.emit("Gather", [g.shape(base_value).name, g.const([0], torch.int64)], torch.int64)
    total = _segment_sum(g, g.value(src), g.cast(g.value(index), torch.int64), num_rows)
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
            return _scatter_select(g, g.value(base), g.value(index), g.value(src), dim, reduce)
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

#: fx call target -> converter. Every instruction of ``kernels.INSTRUCTIONS`` and the ATen ops of captured programs.
CONVERTERS: dict[object, Callable[[OnnxGraph, fx.Node], Value]] = {
    K.quantize: _quantize,
    K.dequantize: _dequantize,
    K.dequantize_acc: _dequantize_acc,
    K.center: _center,
    K.requantize: _requantize,
    K.requantize_fixed_point: _requantize_fixed_point,
    K.relu_codes: _relu_codes,
    K.linear_int: _linear_int,
    K.mul_int: _binary_int("Mul"),
    K.add_int: _binary_int("Add"),
    K.scatter_sum_int: _scatter_sum_int,
    K.index_sum_int: _index_sum_int,
    K.scatter_select_int: _scatter_select_int,
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
    **TENSOR_CONVERTERS,
    **ACTIVATION_CONVERTERS,
}


def _dropout_module(g: OnnxGraph, node: fx.Node, module: ModeDropout) -> Value:
    return g.value(node.args[0])


#: Everything the onnx backend translates.
ALL_CONVERTERS = Converters(CONVERTERS, {ModeDropout: _dropout_module, ModeBatchNorm: batch_norm_module})

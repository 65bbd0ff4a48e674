"""Converters of the ``onnx`` backend: one per instruction of :mod:`mixq_compile.integer.kernels` and per ATen op
that appears in structure and feature programs (:data:`CONVERTERS`), chosen for what is exact *and* fast on
onnxruntime's CPU kernels (see :mod:`mixq_compile.runtimes.onnx_ort` for the choices).
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
from .onnx_graph import (
    CODE_OFFSET,
    Converters,
    OnnxConversionError,
    OnnxGraph,
    Value,
    unsupported,
)

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
def _result_dtype(g: OnnxGraph, node: fx.Node, operands: Sequence) -> torch.dtype:
    val = node.meta.get("val")
    if isinstance(val, Tensor):
        return val.dtype
    dtypes = [g.value(a).plain_dtype for a in operands if isinstance(a, fx.Node)]
    result = dtypes[0]
    for dtype in dtypes[1:]:
        result = torch.promote_types(result, dtype)
    if any(isinstance(a, float) for a in operands) and not result.is_floating_point:
        return torch.float32
    return result


def _elementwise(op_type: str, *, boolean: bool = False) -> Callable[[OnnxGraph, fx.Node], Value]:
    """A binary op with PyTorch's type promotion (a Python scalar takes the tensor's dtype)."""

    def convert(g: OnnxGraph, node: fx.Node) -> Value:
        a, b = node.args[:2]
        alpha = node.kwargs.get("alpha", 1)
        if _is_size(g, a) and _is_size(g, b):
            return _size_arith(g, op_type, a, b)
        dtype = _result_dtype(g, node, (a, b)) if not boolean else None
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


def _unary(op_type: str, **attrs) -> Callable[[OnnxGraph, fx.Node], Value]:
    def convert(g: OnnxGraph, node: fx.Node) -> Value:
        x = g.plain(g.value(node.args[0]))
        return g.emit(op_type, [x.name], x.dtype, **attrs)

    convert.__doc__ = f"Elementwise {op_type}."
    return convert


def _identity(g: OnnxGraph, node: fx.Node) -> Value:
    return g.value(node.args[0])


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
        root = g.emit("Sqrt", [x.name], x.dtype)
        return g.emit("Div", [g.const(1, x.dtype), root.name], x.dtype)
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
    dtype = _result_dtype(g, node, (a, b))
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


def _stack(g: OnnxGraph, node: fx.Node) -> Value:
    """``stack``: each tensor unsqueezed at ``dim`` (of the result's rank), then concatenated there."""
    dim = arg(node, 1, "dim", 0)
    dtype = _result_dtype(g, node, node.args[0])
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
    return [replace(first, name=first.name if i == 0 else f"{first.name}_{i}") for i in range(len(sizes))]


def _getitem(g: OnnxGraph, node: fx.Node) -> Value:
    """One piece of a multi-output op (``split``)."""
    parts = g.env.get(node.args[0])
    if not isinstance(parts, list):
        raise unsupported(node, "indexing a value that is not a list of tensors")
    return parts[node.args[1]]


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
        keepdim = int(bool(arg(node, 2, "keepdim", False)))
        inputs = [x.name] if dims is None else [x.name, g.const(list(dims) if isinstance(dims, list | tuple)
                                                                 else [dims], torch.int64)]  # fmt: skip
        return g.emit(op_type, inputs, x.dtype, keepdims=keepdim)

    convert.__doc__ = f"{op_type} over the given dims (all dims when none are given)."
    return convert


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
    x, indices = g.value(node.args[0]), node.args[1]
    used = [(axis, i) for axis, i in enumerate(indices) if i is not None]
    if len(used) != 1:
        raise unsupported(node, "indexing with more than one index tensor")
    axis, index = used[0]
    index = g.value(index)
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
        dtype = _result_dtype(g, node, node.args[0])
        values = [g.cast(v, dtype) for v in values]
    return replace(g.emit("Concat", [v.name for v in values], values[0].dtype, axis=dim), offset=values[0].offset)


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
    rows = g.emit("Unsqueeze", [g.cast(g.value(index), torch.int64).name, g.const([-1], torch.int64)], torch.int64)
    update = g.cast(g.value(source), target.dtype)
    return g.emit("ScatterND", [target.name, rows.name, update.name], target.dtype)


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


def _nonzero(g: OnnxGraph, node: fx.Node) -> Value:
    return _nonzero_rows(g, g.value(node.args[0]))


def _nonzero_rows(g: OnnxGraph, x: Value) -> Value:
    """``nonzero``: ONNX gives ``[rank, k]``, PyTorch ``[k, rank]``."""
    found = g.emit("NonZero", [x.name], torch.int64)
    return g.emit("Transpose", [found.name], torch.int64, perm=[1, 0])


def _index_put(g: OnnxGraph, node: fx.Node) -> Value:
    """``base[index] = values`` (or ``+=`` with ``accumulate``) for one index tensor on dim 0: a boolean mask or
    integer rows, as ``ScatterND`` (a scalar value under a mask is a ``Where``)."""
    base, indices, values = node.args[:3]
    accumulate = arg(node, 3, "accumulate", False)
    if len(indices) != 1 or indices[0] is None:
        raise unsupported(node, "index_put with more than one index tensor")
    target, index = g.plain(g.value(base)), g.value(indices[0])
    update = g.cast(g.value(values, target), target.dtype)
    update_val = values.meta.get("val") if isinstance(values, fx.Node) else None
    scalar = not isinstance(values, fx.Node) or (isinstance(update_val, Tensor) and update_val.dim() == 0)
    if index.dtype == torch.bool and scalar and not accumulate:
        return g.emit("Where", [index.name, update.name, target.name], target.dtype)
    if index.dtype == torch.bool:
        rows = _nonzero_rows(g, index)
    else:
        rows = g.emit("Unsqueeze", [g.cast(index, torch.int64).name, g.const([-1], torch.int64)], torch.int64)
    if scalar:
        count = g.emit("Shape", [rows.name], torch.int64, end=1)
        update = g.emit("Expand", [update.name, count.name], target.dtype)
    return g.emit("ScatterND", [target.name, rows.name, update.name], target.dtype,
                  **({"reduction": "add"} if accumulate else {}))  # fmt: skip


def _arange(g: OnnxGraph, node: fx.Node) -> Value:
    if node.target == aten.arange.default:
        start, end, step = 0, node.args[0], 1
    else:
        start, end = node.args[:2]
        step = arg(node, 2, "step", 1)
    dtype = node.kwargs.get("dtype") or _result_dtype(g, node, (start, end))
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
    aten.eq.Tensor: _elementwise("Equal", boolean=True),
    aten.eq.Scalar: _elementwise("Equal", boolean=True),
    aten.ne.Tensor: _elementwise("NotEqual", boolean=True),
    aten.ne.Scalar: _elementwise("NotEqual", boolean=True),
    **{
        getattr(getattr(aten, name), kind): _elementwise(op_type, boolean=True)
        for name, op_type in (("lt", "Less"), ("le", "LessOrEqual"), ("gt", "Greater"), ("ge", "GreaterOrEqual"))
        for kind in ("Tensor", "Scalar")
    },
    aten.pow.Tensor_Scalar: _pow,
    aten.pow_.Scalar: _pow,
    aten.relu.default: _unary("Relu"),
    aten.relu_.default: _unary("Relu"),
    aten.sigmoid.default: _unary("Sigmoid"),
    aten.exp.default: _unary("Exp"),
    aten.log.default: _unary("Log"),
    aten.sqrt.default: _unary("Sqrt"),
    aten.abs.default: _unary("Abs"),
    aten.neg.default: _unary("Neg"),
    aten.reciprocal.default: _unary("Reciprocal"),
    aten.tanh.default: _unary("Tanh"),
    aten.leaky_relu.default: _leaky_relu,
    aten.clamp.default: _clamp,
    aten.clamp_.default: _clamp,
    aten.softmax.int: _softmax,
    aten._softmax.default: _softmax,
    aten.matmul.default: _matmul,
    aten.mm.default: _matmul,
    aten.bmm.default: _matmul,
    aten.stack.default: _stack,
    aten.split.Tensor: _split,
    aten.split_with_sizes.default: _split,
    operator.getitem: _getitem,
    aten.masked_fill.Scalar: _masked_fill,
    aten.masked_fill_.Scalar: _masked_fill,
    aten.where.self: _where,
    aten.linear.default: _linear,
    aten.batch_norm.default: _aten_batch_norm,
    aten.dropout.default: _dropout,
    aten.feature_dropout.default: _dropout,
    aten.detach.default: _identity,
    aten.clone.default: _identity,
    aten.contiguous.default: _identity,
    aten.alias.default: _identity,
    aten.sum.dim_IntList: _reduce("ReduceSum"),
    aten.mean.dim: _reduce("ReduceMean"),
    aten.max.default: _reduce("ReduceMax"),
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
    aten.gru_cell.default: _gru_cell,
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
    aten.scatter_add.default: _scatter_add,
    aten.scatter_add_.default: _scatter_add,
    aten.index_add.default: _index_add,
    aten.index_add_.default: _index_add,
    aten.scatter_reduce.two: _scatter_reduce,
    aten.scatter_reduce_.two: _scatter_reduce,
}


def _dropout_module(g: OnnxGraph, node: fx.Node, module: ModeDropout) -> Value:
    return g.value(node.args[0])


#: Everything the onnx backend translates.
ALL_CONVERTERS = Converters(CONVERTERS, {ModeDropout: _dropout_module, ModeBatchNorm: batch_norm_module})

"""Converters of the ``onnx`` backend for the integer instructions (:mod:`mixq_compile.ir.instructions`):
:data:`INTEGER_CONVERTERS`, chosen for what is exact *and* fast on onnxruntime's CPU kernels (see
:mod:`mixq_compile.runtimes.onnx.backend` for the choices)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from onnx import TensorProto
from torch import Tensor, fx

from ...ir import instructions as K
from ...ops import csr as _registers_mixq_csr_sum  # noqa: F401  (torch.ops.mixq.csr_sum)
from .graph import CODE_OFFSET, OnnxConversionError, OnnxGraph, Value, unsupported
from .scatter import csr_row_sum, scatter_into_zeros, scatter_select, segment_sum, zeros_of_size

aten = torch.ops.aten


def _per_axis(tensor: Tensor) -> tuple[np.ndarray, int | None]:
    """A broadcastable scale/zero tensor as ONNX Q/DQ wants it: a scalar, or 1-D along one axis (negative)."""
    if tensor.numel() == 1:
        return tensor.reshape(()).numpy(), None
    axes = [d for d in range(tensor.dim()) if tensor.shape[d] != 1]
    if len(axes) != 1:
        raise OnnxConversionError(f"scale/zero of shape {tuple(tensor.shape)} varies along more than one axis")
    return tensor.reshape(-1).numpy(), axes[0] - tensor.dim()


def _to_codes(g: OnnxGraph, real: Value, zero: Tensor, qmin: int, qmax: int, scale: Tensor | None = None) -> Value:
    """``clamp(round(real / scale) + zero, qmin, qmax)`` in the container of ``[qmin, qmax]`` (no ``scale``: 1).

    int8 containers: one ``QuantizeLinear`` (it divides by the scale, rounds half to even as ``torch.round``, adds
    the zero-point ``zero + 128`` and saturates to uint8, which is the int8 clamp: the instruction's steps) then a
    ``Clip`` for narrower grids. Wider containers: the same steps as float ops, then a cast.
    """
    container = K.container_dtype(qmin, qmax)
    scale = torch.ones(()) if scale is None else scale.float()
    if container == torch.int8:
        scale, zero = torch.broadcast_tensors(scale, zero.to(torch.int32) + CODE_OFFSET)
        scales, axis = _per_axis(scale.contiguous())
        zeros, _ = _per_axis(zero.contiguous())
        attrs = {} if axis is None else {"axis": axis}
        names = [real.name, g.initializer(scales.astype(np.float32)), g.initializer(zeros.astype(np.uint8))]
        codes = g.emit("QuantizeLinear", names, torch.uint8, offset=True, **attrs)
        if (qmin, qmax) != (-128, 127):
            low, high = g.const(qmin + CODE_OFFSET, torch.uint8), g.const(qmax + CODE_OFFSET, torch.uint8)
            codes = g.emit("Clip", [codes.name, low, high], torch.uint8, offset=True)
        return codes
    if bool((scale != 1).any()):
        real = g.emit("Div", [real.name, g.const(scale, torch.float32)], torch.float32)
    rounded = g.emit("Round", [real.name], torch.float32)
    shifted = g.emit("Add", [rounded.name, g.const(zero, torch.float32)], torch.float32)
    clipped = g.emit("Clip", [shifted.name, g.const(qmin, torch.float32), g.const(qmax, torch.float32)],
                     torch.float32)  # fmt: skip
    return g.cast(clipped, container)


def _quantize(g: OnnxGraph, node: fx.Node) -> Value:
    """``clamp(round(x / scale) + zero)``: ``QuantizeLinear(x, scale, zero)`` itself, the instruction's formula."""
    x, scale_node, zero_node, qmin, qmax = node.args
    x = g.cast(g.value(x), torch.float32)
    return _to_codes(g, x, g.consts[zero_node], qmin, qmax, scale=g.consts[scale_node])


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


def _scatter_sum_int(g: OnnxGraph, node: fx.Node) -> Value:
    acc, dim, index, size = node.args
    return scatter_into_zeros(g, g.cast(g.value(acc), torch.int32), index, acc, size, dim)


def _index_sum_int(g: OnnxGraph, node: fx.Node) -> Value:
    acc, dim, index, size = node.args
    if dim != 0:
        raise unsupported(node, f"index_add along dim {dim}; only dim 0 is translated")
    rows = g.cast(g.value(index), torch.int64)
    num_rows = g.emit("Slice", [g.ints(size).name, g.const([0], torch.int64), g.const([1], torch.int64)], torch.int64)
    return segment_sum(g, g.cast(g.value(acc), torch.int32), rows, num_rows)


def _csr_sum(g: OnnxGraph, node: fx.Node) -> Value:
    """``mixq::csr_sum`` (edges sorted by target in the structure program): :func:`.scatter.csr_row_sum` of the
    centered table, int32 for codes, the table's float type for floats."""
    dst, src, weight, table_node, zero, rows = node.args
    table = g.value(table_node)
    if not table.dtype.is_floating_point:
        zero = g.consts[zero] if zero is not None else torch.zeros((), dtype=torch.int32)
        table = _centered(g, table, zero)
    num_rows = g.emit("Reshape", [g.ints(rows).name, g.const([1], torch.int64)], torch.int64)
    weight = g.value(weight) if weight is not None else None
    out = csr_row_sum(g, g.value(dst), g.value(src), weight, table, num_rows)
    return g.cast(out, table.dtype if table.dtype.is_floating_point else torch.int32)


def _scatter_select_int(g: OnnxGraph, node: fx.Node) -> Value:
    acc, dim, index, size, reduce = node.args
    base = zeros_of_size(g, size, torch.int32)
    return scatter_select(g, base, g.value(index), g.cast(g.value(acc), torch.int32), dim, reduce)


#: instruction -> converter: every instruction of ``instructions.INSTRUCTIONS``
INTEGER_CONVERTERS: dict[object, Callable[[OnnxGraph, fx.Node], Value]] = {
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
    torch.ops.mixq.csr_sum.default: _csr_sum,
}

"""Converters of the TVM backend for the integer instructions (:mod:`mixq_compile.ir.instructions`) and the fused
``mixq::`` operators lowering emits for it: :data:`INTEGER_CONVERTERS`."""

from __future__ import annotations

import numpy as np
import torch
from torch import fx
from tvm import relax, tirx

from ...ir import instructions as K
from ...ops.packed import pack_reference, packing_bits
from . import kernels as TK
from .kernel_calls import csr_aggregation, rows
from .schedule import static_extent as _static
from .translator import Converter, ConverterMap, dtype_of, normal_axis, shape_of, unsupported

aten = torch.ops.aten


# -- integer instructions -----------------------------------------------------------------------------------------
def _codes(c: Converter, real: relax.Expr, qmin: int, qmax: int) -> relax.Expr:
    """Rounded float values -> clamped codes in their container (the tail of quantize/requantize)."""
    clipped = c.emit(relax.op.clip(real, qmin, qmax))
    return c.emit(relax.op.astype(clipped, str(K.container_dtype(qmin, qmax)).removeprefix("torch.")))


def _quantize(c: Converter, node: fx.Node) -> relax.Expr:
    return _quantized(c, *node.args)


def _quantized(c: Converter, x: object, scale: object, zero: object, qmin: int, qmax: int) -> relax.Expr:
    scaled = c.emit(relax.op.divide(c.tensor(x, "float32"), c.tensor(scale, "float32")))
    return _codes(c, c.emit(relax.op.add(c.emit(relax.op.round(scaled)), c.tensor(zero, "float32"))), qmin, qmax)


def _dequantize(c: Converter, node: fx.Node) -> relax.Expr:
    q, scale, zero = node.args
    centered = c.emit(relax.op.subtract(c.tensor(q, "int32"), c.tensor(zero, "int32")))
    return c.emit(relax.op.multiply(c.emit(relax.op.astype(centered, "float32")), c.tensor(scale, "float32")))


def _dequantize_acc(c: Converter, node: fx.Node) -> relax.Expr:
    acc, scale = node.args
    value, scales = c.tensor(acc, "float32"), c.tensor(scale, "float32")
    return c.emit(relax.op.multiply(_channels_pinned(c, value, scales), scales))


def _channels_pinned(c: Converter, value: relax.Expr, scales: relax.Expr) -> relax.Expr:
    """``value`` with its last size bound to the number of per-channel ``scales`` (one per output channel of a
    linear layer: equal by construction). A reshape to ``[E, heads, -1]`` leaves that size as an expression in
    run-time sizes Relax cannot simplify, and the product's shape would be unknown."""
    shape, channels = shape_of(value), shape_of(scales)
    if not shape or len(channels) != 1 or not isinstance(channels[0], tirx.IntImm):
        return value
    last = shape[-1]
    if isinstance(last, tirx.IntImm) or int(channels[0]) == 1:
        return value
    return c.bb.match_cast(value, relax.TensorType([*shape[:-1], channels[0]], dtype_of(value)))


def _center(c: Converter, node: fx.Node) -> relax.Expr:
    q, zero = node.args
    return c.emit(relax.op.subtract(c.tensor(q, "int32"), c.tensor(zero, "int32")))


def _requantize(c: Converter, node: fx.Node) -> relax.Expr:
    acc, multiplier, zero, qmin, qmax = node.args
    scaled = c.emit(relax.op.round(c.emit(relax.op.multiply(c.tensor(acc, "float32"), c.tensor(multiplier)))))
    return _codes(c, c.emit(relax.op.add(scaled, c.tensor(zero, "float32"))), qmin, qmax)


def _requantize_fixed_point(c: Converter, node: fx.Node) -> relax.Expr:
    acc, mantissa, shift, zero, qmin, qmax = node.args
    shift_value = c.array(shift)
    if shift_value is None:
        raise unsupported(node, "the shift must be a constant")
    product = c.emit(relax.op.multiply(c.tensor(acc, "int64"), c.tensor(mantissa, "int64")))
    half = relax.const((np.ones_like(shift_value) << (shift_value - 1)).astype(np.int64))
    rounded = c.emit(relax.op.right_shift(c.emit(relax.op.add(product, half)), c.tensor(shift, "int64")))
    return _codes(c, c.emit(relax.op.add(rounded, c.tensor(zero, "int64"))), qmin, qmax)


def _relu_codes(c: Converter, node: fx.Node) -> relax.Expr:
    q, zero = node.args
    codes = c.tensor(q)
    return c.emit(relax.op.maximum(codes, c.tensor(zero, dtype_of(codes))))


def _linear_int(c: Converter, node: fx.Node) -> relax.Expr:
    return _integer_linear(c, *node.args)


def _quantize_linear(c: Converter, node: fx.Node) -> relax.Expr:
    """The fused input layer (:func:`~mixq_compile.lowering.fuse_input_linear.fuse_input_linear`): the sparse TIR
    kernel where the converter was told the features are sparse and the operands allow it, else quantize + GEMM."""
    x, scale, zero, qmin, qmax, w_t, w_sum, bias = node.args
    operands = [c.array(a) for a in (scale, zero, w_t)]
    b = None if bias is None else c.array(bias)
    features = c.tensor(x, "float32")
    shape = shape_of(features)
    k = _static(shape[-1])
    if node in c.sparse_inputs and all(v is not None for v in operands) and (bias is None or b is not None):
        s, z, w = operands
        sparse = s.size == 1 and z.size == 1 and w.dtype == np.int8 and k is not None and len(shape) == 2
        s, z = float(s.reshape(())), float(z.reshape(()))
        if sparse and qmin <= z <= qmax:  # 0.0 quantizes to the zero-point: zero features add nothing
            bias32 = np.zeros(w.shape[1], np.int32) if b is None else b.astype(np.int32).reshape(-1)
            c.sparse_used += 1
            w_qmin = int(w.min()) if w.size else 0
            w_bits = packing_bits(w_qmin, int(w.max())) if c.packed and w.size else None
            if w_bits is None:
                hint, weight = "quantize_linear_sparse", w
                kernel = TK.quantize_linear_sparse(k, w.shape[1], s, z, qmin, qmax)
            else:  # 2- or 4-bit weights: the artifact stores them packed, the kernel reads them so
                c.packed_weights += 1
                hint = "quantize_linear_sparse_packed"
                kernel = TK.quantize_linear_sparse_packed(k, w.shape[1], s, z, qmin, qmax, w_bits, w_qmin)
                weight = pack_reference(torch.from_numpy(w), w_qmin, w_bits).numpy()
            args = [features, relax.const(weight), relax.const(bias32)]
            return c.call_kernel(kernel, hint, args, [shape[0], w.shape[1]], "int32", checks=x)
    return _integer_linear(c, _quantized(c, features, scale, zero, qmin, qmax), zero, w_t, w_sum, bias)


def _integer_linear(c: Converter, q_x: object, x_zero: object, w_t: object, w_sum: object, bias: object) -> relax.Expr:
    x = c.tensor(q_x)
    w, zero, sums = c.array(w_t), c.array(x_zero), c.array(w_sum)
    b = None if bias is None else c.array(bias)
    k = _static(shape_of(x)[-1])
    int8 = dtype_of(x) == "int8" and w is not None and w.dtype == np.int8 and sums is not None
    if int8 and zero is not None and zero.size == 1 and k is not None and (bias is None or b is not None):
        dense = _dense_vnni if c.use_vnni else _dense_int_f32
        return rows(c, x, lambda flat: dense(c, flat, w, sums, int(zero.reshape(())), b))
    acc = c.emit(relax.op.matmul(c.tensor(q_x, "int32"), c.tensor(w_t, "int32"), out_dtype="int32"))
    folded = c.emit(relax.op.multiply(c.tensor(x_zero, "int32"), c.tensor(w_sum, "int32")))
    acc = c.emit(relax.op.subtract(acc, folded))
    return acc if bias is None else c.emit(relax.op.add(acc, c.tensor(bias, "int32")))


def _dense_int_f32(
    c: Converter, x: relax.Expr, w_t: np.ndarray, w_sum: np.ndarray, zero: int, bias: np.ndarray | None
) -> relax.Expr:
    k, o = w_t.shape
    weight = relax.const(TK.pad_columns(w_t.astype(np.float32)))
    correction = relax.const(TK.exact_correction(w_sum, zero, bias))
    return c.call_kernel(TK.dense_int_f32(k, o), "dense_int_f32", [x, weight, correction], [shape_of(x)[0], o], "int32")


def _dense_vnni(
    c: Converter, x: relax.Expr, w_t: np.ndarray, w_sum: np.ndarray, zero: int, bias: np.ndarray | None
) -> relax.Expr:
    k, o = w_t.shape
    packed = relax.const(TK.pack_vnni_weight(w_t))
    correction = relax.const(TK.vnni_correction(w_sum, zero, bias))
    return c.call_kernel(TK.dense_vnni(k, o), "dense_vnni", [x, packed, correction], [shape_of(x)[0], o], "int32")


def _mul_int(c: Converter, node: fx.Node) -> relax.Expr:
    return c.emit(relax.op.multiply(*(c.tensor(a, "int32") for a in node.args)))


def _add_int(c: Converter, node: fx.Node) -> relax.Expr:
    return c.emit(relax.op.add(*(c.tensor(a, "int32") for a in node.args)))


def _sum_int(c: Converter, node: fx.Node) -> relax.Expr:
    acc, dim, index, size = node.args
    csr = csr_aggregation(c, c.aggregations[node], size, "int32") if node in c.aggregations else None
    if csr is not None:
        return csr
    messages = c.tensor(acc, "int32")
    if node.target is K.index_sum_int:
        index = _index_add_index(c, c.tensor(index), messages, dim)
    base = c.emit(relax.op.zeros(c.value(size), "int32"))
    return c.emit(relax.op.scatter_elements(base, c.tensor(index), messages, axis=dim, reduction="add"))


def _index_add_index(c: Converter, index: relax.Expr, src: relax.Expr, dim: int) -> relax.Expr:
    """``index_add``'s 1-D index as a ``scatter_elements`` index: broadcast along every other dim of ``src``."""
    shape = shape_of(src)
    axis = normal_axis(dim, len(shape))
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return c.emit(relax.op.broadcast_to(c.emit(relax.op.reshape(index, view)), shape))


def _scatter_select_int(c: Converter, node: fx.Node) -> relax.Expr:
    acc, dim, index, size, reduce_op = node.args
    # Rows that receive nothing keep a sentinel and become 0 (real zero). Not INT32_MIN: TVM 0.27 folds
    # ``x == INT32_MIN`` to false (its literal is the int32 negation of 2**31), which left empty rows of a max
    # aggregation at -2**31 (SAGEConv-max on a graph with an isolated node). Centered codes never come near +-2**31.
    empty = -(2**31 - 1) if reduce_op == "amax" else 2**31 - 1
    base = c.emit(relax.op.full(c.value(size), relax.const(empty, "int32"), "int32"))
    mode = {"amax": "max", "amin": "min"}[reduce_op]
    out = c.emit(relax.op.scatter_elements(base, c.tensor(index), c.tensor(acc, "int32"), axis=dim, reduction=mode))
    untouched = c.emit(relax.op.equal(out, relax.const(empty, "int32")))
    return c.emit(relax.op.where(untouched, relax.const(0, "int32"), out))


INTEGER_CONVERTERS: ConverterMap = {
    K.quantize: _quantize,
    K.dequantize: _dequantize,
    K.dequantize_acc: _dequantize_acc,
    K.center: _center,
    K.requantize: _requantize,
    K.requantize_fixed_point: _requantize_fixed_point,
    K.relu_codes: _relu_codes,
    K.linear_int: _linear_int,
    torch.ops.mixq.quantize_linear.default: _quantize_linear,
    K.mul_int: _mul_int,
    K.add_int: _add_int,
    K.scatter_sum_int: _sum_int,
    K.index_sum_int: _sum_int,
    K.scatter_select_int: _scatter_select_int,
}

"""Translate a feature program (``torch.fx`` over the integer instruction set and ATen) into a Relax module.

One converter per instruction of :data:`mixq_compile.integer.kernels.INSTRUCTIONS` and per ATen op that feature
programs contain (:data:`CONVERTERS`). Node and edge counts are symbolic (``tirx.Var``), so one build serves every
graph. The hot spots do not go through Relax's generic ops: ``linear_int`` on int8 codes becomes the VNNI kernel,
FP32 ``linear`` with a constant weight the register-blocked FP32 kernel, and every sum aggregation of gathered
messages (:class:`Aggregation`) a CSR kernel over edges that the structure program sorts by target
(:mod:`mixq_compile.runtimes.tvm_kernels`). Everything else is legalized by Relax, fused, and given a generic
parallel/vectorized schedule (:class:`CpuSpatial`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

import numpy as np
import torch
import tvm
from torch import Tensor, fx
from tvm import relax, tirx

from ..errors import MixQError
from ..integer import kernels as K
from ..passes.aggregation import SCATTER_ADDS, ZERO_MAKERS, Aggregation
from ..passes.train_mode import ModeBatchNorm
from . import tvm_kernels as TK
from .fx_args import arg
from .tvm_schedule import static_extent as _static

aten = torch.ops.aten


class UnsupportedOpError(MixQError, NotImplementedError):
    """A feature program uses an op the TVM converter has no translation for."""


def _unsupported(node: fx.Node, why: str) -> UnsupportedOpError:
    op = getattr(node.target, "__name__", str(node.target))
    return UnsupportedOpError(
        f"the TVM backend cannot translate {node.name} ({op}): {why}. Export with backend='torch' (or 'onnx'), or "
        f"add a converter for it to mixq_compile.runtimes.tvm_convert.CONVERTERS"
    )


# -- the converter -------------------------------------------------------------------------------------------------
Shape = list  # of int | tirx.PrimExpr


@dataclass(frozen=True)
class Param:
    """A Relax function parameter: name, dtype and shape (ints and ``tirx.Var`` for dynamic sizes)."""

    name: str
    dtype: str
    shape: Shape


class Converter:
    """Walks the feature graph once, emitting Relax bindings through a ``BlockBuilder``."""

    def __init__(
        self,
        gm: fx.GraphModule,
        aggregations: list[Aggregation],
        use_vnni: bool,
        sparse_inputs: frozenset[fx.Node] = frozenset(),
    ) -> None:
        self.gm = gm
        self.bb = relax.BlockBuilder()
        self.env: dict[fx.Node, object] = {}
        self.aggregations = {a.node: a for a in aggregations}
        self.use_vnni = use_vnni
        self.sparse_inputs = sparse_inputs  # fused input layers whose features are sparse (the sparse kernel)
        self.params: list[relax.Var] = []
        self.csr_used = 0  # aggregations that did get the CSR kernel
        self.sparse_used = 0  # input layers that did get the sparse kernel

    # -- values ---------------------------------------------------------------------------------------------------
    def value(self, arg: object) -> object:
        return fx.node.map_aggregate(arg, lambda a: self.env[a] if isinstance(a, fx.Node) else a)

    def tensor(self, arg: object, dtype: str | None = None) -> relax.Expr:
        """``arg`` as a Relax tensor expression (constants become ``relax.const``), optionally cast."""
        value = self.value(arg)
        if isinstance(value, Tensor):
            value = relax.const(value.detach().cpu().numpy())
        elif isinstance(value, bool | int | float):
            value = relax.const(value, dtype or ("float32" if isinstance(value, float) else "int64"))
        if dtype is not None and _dtype(value) != dtype:
            value = self.emit(relax.op.astype(value, dtype))
        return value

    def array(self, arg: object) -> np.ndarray | None:
        """A constant operand as numpy (``None`` when it is computed at run time)."""
        value = self.value(arg)
        return value.detach().cpu().numpy() if isinstance(value, Tensor) else None

    def emit(self, expr: relax.Expr) -> relax.Var:
        return self.bb.emit(expr)

    def add_kernel(self, func: tirx.PrimFunc, hint: str) -> relax.GlobalVar:
        return self.bb.add_func(func.without_attr("global_symbol"), hint)

    def call_kernel(self, func: tirx.PrimFunc, hint: str, args: list, shape: Shape, dtype: str) -> relax.Var:
        gv = self.add_kernel(func, hint)
        return self.emit(relax.call_tir(gv, args, relax.TensorType(shape, dtype)))

    # -- driver ---------------------------------------------------------------------------------------------------
    def build(self, params: list[Param]) -> tvm.IRModule:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        self.params = [relax.Var(p.name, relax.TensorType(p.shape, p.dtype)) for p in params]
        for node, var in zip(placeholders, self.params):
            self.env[node] = var
        with self.bb.function("main", self.params):
            with self.bb.dataflow():
                for node in self.gm.graph.nodes:
                    if node.op == "get_attr":
                        self.env[node] = operator.attrgetter(node.target)(self.gm)
                    elif node.op in ("call_function", "call_module"):
                        self.env[node] = self.convert(node)
                    elif node.op == "output":
                        outputs = [self.tensor(a) for a in node.args[0]]
                        result = self.bb.emit_output(relax.Tuple(outputs))
                    elif node.op != "placeholder":
                        raise _unsupported(node, f"{node.op} nodes are not supported")
            self.bb.emit_func_output(result)
        return self.bb.get()

    def convert(self, node: fx.Node) -> object:
        return _converter(self.gm, node)(self, node)


def _converter(gm: fx.GraphModule, node: fx.Node) -> Callable[[Converter, fx.Node], object]:
    if node.op == "call_module":
        converter = MODULE_CONVERTERS.get(type(gm.get_submodule(node.target)))
    else:
        converter = CONVERTERS.get(node.target) if node.op == "call_function" else None
    if converter is None:
        raise _unsupported(node, f"no converter for this {node.op.replace('_', ' ')}")
    return converter


def check_supported(gm: fx.GraphModule) -> None:
    """Fail fast, before the slow structure export and build, naming *every* op without a converter (the first
    one alone can hide the op the user needs to know about)."""
    missing: dict[str, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_module", "call_method"):
            try:
                _converter(gm, node)
            except UnsupportedOpError:
                missing.setdefault(getattr(node.target, "__name__", str(node.target)), []).append(node.name)
    if missing:
        listed = "; ".join(f"{op} (at {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                           for op, names in missing.items())  # fmt: skip
        raise UnsupportedOpError(
            f"the TVM backend has no converter for {len(missing)} op(s) of this feature program: {listed}. Export "
            f"with backend='torch' (or 'onnx'), or add converters to mixq_compile.runtimes.tvm_convert.CONVERTERS"
        )


def _dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _shape(expr: relax.Expr) -> Shape:
    return list(expr.ty.shape.values)


def _axis(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


CONVERTERS: dict[object, Callable[[Converter, fx.Node], object]] = {}


def _converts(*targets: object) -> Callable:
    def register(fn: Callable) -> Callable:
        for target in targets:
            CONVERTERS[target] = fn
        return fn

    return register


# -- integer instructions -----------------------------------------------------------------------------------------
def _codes(c: Converter, real: relax.Expr, qmin: int, qmax: int) -> relax.Expr:
    """Rounded float values -> clamped codes in their container (the tail of quantize/requantize)."""
    clipped = c.emit(relax.op.clip(real, qmin, qmax))
    return c.emit(relax.op.astype(clipped, str(K.container_dtype(qmin, qmax)).removeprefix("torch.")))


@_converts(K.quantize)
def _quantize(c: Converter, node: fx.Node) -> relax.Expr:
    return _quantized(c, *node.args)


def _quantized(c: Converter, x: object, scale: object, zero: object, qmin: int, qmax: int) -> relax.Expr:
    scaled = c.emit(relax.op.divide(c.tensor(x, "float32"), c.tensor(scale, "float32")))
    return _codes(c, c.emit(relax.op.round(c.emit(relax.op.add(scaled, c.tensor(zero, "float32"))))), qmin, qmax)


@_converts(K.dequantize)
def _dequantize(c: Converter, node: fx.Node) -> relax.Expr:
    q, scale, zero = node.args
    centered = c.emit(relax.op.subtract(c.tensor(q, "int32"), c.tensor(zero, "int32")))
    return c.emit(relax.op.multiply(c.emit(relax.op.astype(centered, "float32")), c.tensor(scale, "float32")))


@_converts(K.dequantize_acc)
def _dequantize_acc(c: Converter, node: fx.Node) -> relax.Expr:
    acc, scale = node.args
    return c.emit(relax.op.multiply(c.tensor(acc, "float32"), c.tensor(scale, "float32")))


@_converts(K.center)
def _center(c: Converter, node: fx.Node) -> relax.Expr:
    q, zero = node.args
    return c.emit(relax.op.subtract(c.tensor(q, "int32"), c.tensor(zero, "int32")))


@_converts(K.requantize)
def _requantize(c: Converter, node: fx.Node) -> relax.Expr:
    acc, multiplier, zero, qmin, qmax = node.args
    scaled = c.emit(relax.op.round(c.emit(relax.op.multiply(c.tensor(acc, "float32"), c.tensor(multiplier)))))
    return _codes(c, c.emit(relax.op.add(scaled, c.tensor(zero, "float32"))), qmin, qmax)


@_converts(K.requantize_fixed_point)
def _requantize_fixed_point(c: Converter, node: fx.Node) -> relax.Expr:
    acc, mantissa, shift, zero, qmin, qmax = node.args
    shift_value = c.array(shift)
    if shift_value is None:
        raise _unsupported(node, "the shift must be a constant")
    product = c.emit(relax.op.multiply(c.tensor(acc, "int64"), c.tensor(mantissa, "int64")))
    half = relax.const((np.ones_like(shift_value) << (shift_value - 1)).astype(np.int64))
    rounded = c.emit(relax.op.right_shift(c.emit(relax.op.add(product, half)), c.tensor(shift, "int64")))
    return _codes(c, c.emit(relax.op.add(rounded, c.tensor(zero, "int64"))), qmin, qmax)


@_converts(K.relu_codes)
def _relu_codes(c: Converter, node: fx.Node) -> relax.Expr:
    q, zero = node.args
    codes = c.tensor(q)
    return c.emit(relax.op.maximum(codes, c.tensor(zero, _dtype(codes))))


@_converts(K.linear_int)
def _linear_int(c: Converter, node: fx.Node) -> relax.Expr:
    return _integer_linear(c, *node.args)


@_converts(torch.ops.mixq.quantize_linear.default)
def _quantize_linear(c: Converter, node: fx.Node) -> relax.Expr:
    """The fused input layer (:func:`~mixq_compile.passes.fuse_input_linear.fuse_input_linear`): the sparse TIR
    kernel where the converter was told the features are sparse and the operands allow it, else quantize + GEMM."""
    x, scale, zero, qmin, qmax, w_t, w_sum, bias = node.args
    operands = [c.array(a) for a in (scale, zero, w_t)]
    b = None if bias is None else c.array(bias)
    features = c.tensor(x, "float32")
    shape = _shape(features)
    k = _static(shape[-1])
    if node in c.sparse_inputs and all(v is not None for v in operands) and (bias is None or b is not None):
        s, z, w = operands
        sparse = s.size == 1 and z.size == 1 and w.dtype == np.int8 and k is not None and len(shape) == 2
        s, z = float(s.reshape(())), float(z.reshape(()))
        if sparse and qmin <= z <= qmax:  # 0.0 quantizes to the zero-point: zero features add nothing
            bias32 = np.zeros(w.shape[1], np.int32) if b is None else b.astype(np.int32).reshape(-1)
            kernel = TK.quantize_linear_sparse(k, w.shape[1], s, z, qmin, qmax)
            c.sparse_used += 1
            return c.call_kernel(kernel, "quantize_linear_sparse", [features, relax.const(w), relax.const(bias32)],
                                 [shape[0], w.shape[1]], "int32")  # fmt: skip
    return _integer_linear(c, _quantized(c, features, scale, zero, qmin, qmax), zero, w_t, w_sum, bias)


def _integer_linear(c: Converter, q_x: object, x_zero: object, w_t: object, w_sum: object, bias: object) -> relax.Expr:
    x = c.tensor(q_x)
    w, zero, sums = c.array(w_t), c.array(x_zero), c.array(w_sum)
    b = None if bias is None else c.array(bias)
    k = _static(_shape(x)[-1])
    int8 = _dtype(x) == "int8" and w is not None and w.dtype == np.int8 and sums is not None
    if int8 and zero is not None and zero.size == 1 and k is not None and (bias is None or b is not None):
        dense = _dense_vnni if c.use_vnni else _dense_int_f32
        return _rows(c, x, lambda flat: dense(c, flat, w, sums, int(zero.reshape(())), b))
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
    return c.call_kernel(TK.dense_int_f32(k, o), "dense_int_f32", [x, weight, correction], [_shape(x)[0], o], "int32")


def _rows(c: Converter, x: relax.Expr, dense: Callable[[relax.Expr], relax.Expr]) -> relax.Expr:
    """Apply a 2-D row kernel to ``x`` of any rank (leading dims flattened into rows, restored after)."""
    shape = _shape(x)
    if len(shape) == 2:
        return dense(x)
    rows = reduce(lambda a, b: a * b, shape[:-1], 1)
    out = dense(c.emit(relax.op.reshape(x, [rows, shape[-1]])))
    return c.emit(relax.op.reshape(out, [*shape[:-1], _shape(out)[-1]]))


def _dense_vnni(
    c: Converter, x: relax.Expr, w_t: np.ndarray, w_sum: np.ndarray, zero: int, bias: np.ndarray | None
) -> relax.Expr:
    k, o = w_t.shape
    packed = relax.const(TK.pack_vnni_weight(w_t))
    correction = relax.const(TK.vnni_correction(w_sum, zero, bias))
    return c.call_kernel(TK.dense_vnni(k, o), "dense_vnni", [x, packed, correction], [_shape(x)[0], o], "int32")


@_converts(K.mul_int)
def _mul_int(c: Converter, node: fx.Node) -> relax.Expr:
    return c.emit(relax.op.multiply(*(c.tensor(a, "int32") for a in node.args)))


@_converts(K.add_int)
def _add_int(c: Converter, node: fx.Node) -> relax.Expr:
    return c.emit(relax.op.add(*(c.tensor(a, "int32") for a in node.args)))


@_converts(K.scatter_sum_int, K.index_sum_int)
def _sum_int(c: Converter, node: fx.Node) -> relax.Expr:
    acc, dim, index, size = node.args
    csr = _csr(c, c.aggregations[node], size, "int32") if node in c.aggregations else None
    if csr is not None:
        return csr
    messages = c.tensor(acc, "int32")
    if node.target is K.index_sum_int:
        index = _index_add_index(c, c.tensor(index), messages, dim)
    base = c.emit(relax.op.zeros(c.value(size), "int32"))
    return c.emit(relax.op.scatter_elements(base, c.tensor(index), messages, axis=dim, reduction="add"))


def _index_add_index(c: Converter, index: relax.Expr, src: relax.Expr, dim: int) -> relax.Expr:
    """``index_add``'s 1-D index as a ``scatter_elements`` index: broadcast along every other dim of ``src``."""
    shape = _shape(src)
    axis = _axis(dim, len(shape))
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return c.emit(relax.op.broadcast_to(c.emit(relax.op.reshape(index, view)), shape))


@_converts(K.scatter_select_int)
def _scatter_select_int(c: Converter, node: fx.Node) -> relax.Expr:
    acc, dim, index, size, reduce_op = node.args
    empty = np.iinfo(np.int32).min if reduce_op == "amax" else np.iinfo(np.int32).max
    base = c.emit(relax.op.full(c.value(size), relax.const(empty, "int32"), "int32"))
    mode = {"amax": "max", "amin": "min"}[reduce_op]
    out = c.emit(relax.op.scatter_elements(base, c.tensor(index), c.tensor(acc, "int32"), axis=dim, reduction=mode))
    untouched = c.emit(relax.op.equal(out, relax.const(empty, "int32")))
    return c.emit(relax.op.where(untouched, relax.const(0, "int32"), out))


#: table dtype -> the aggregation's dtype, for the tables the CSR kernel takes.
_CSR_TABLES = {"int8": "int32", "int16": "int32", "int32": "int32", "float32": "float32"}


def _csr(c: Converter, agg: Aggregation, size: object, dtype: str) -> relax.Expr | None:
    """The CSR kernel for ``agg``: row pointers from the sorted targets, then one parallel row-sum. ``None`` when
    the shapes or dtypes do not fit the kernel; the caller then emits the generic scatter."""
    size = c.value(size)
    table = c.tensor(agg.table)
    shape = _shape(table)
    if len(size) != 2 or len(shape) != 2 or _CSR_TABLES.get(_dtype(table)) != dtype:
        return None
    rows, channels = size[0], _static(size[1])
    if channels is None or _static(shape[1]) != channels:
        return None
    c.csr_used += 1
    start = agg.extras
    dst, src = c.params[start], c.params[start + 1]
    weight = c.params[start + 2] if agg.weight is not None else relax.const(np.zeros(1, dtype))
    zero = np.zeros(channels, dtype)
    if agg.zero is not None:
        zero = np.broadcast_to(c.array(agg.zero).reshape(-1).astype(dtype), (channels,)).copy()
    rowptr = c.call_kernel(TK.csr_rowptr, "csr_rowptr", [dst], [rows + 1], "int64")
    kernel = TK.csr_aggregate(
        channels,
        _dtype(table),
        _dtype(weight) if agg.weight is not None else None,
        agg.zero is not None,
    )
    args = [rowptr, src, weight, table, relax.const(zero)]
    return c.call_kernel(kernel, "csr_aggregate", args, [rows, channels], dtype)


# -- ATen ops -----------------------------------------------------------------------------------------------------
@_converts(aten.sym_size.int)
def _sym_size(c: Converter, node: fx.Node) -> tirx.PrimExpr:
    x, dim = node.args
    shape = _shape(c.tensor(x))
    return shape[_axis(dim, len(shape))]


@_converts(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def _reshape(c: Converter, node: fx.Node) -> relax.Expr:
    x = c.tensor(node.args[0])
    shape = list(c.value(node.args[1]))
    if -1 in shape:
        numel = reduce(lambda a, b: a * b, _shape(x), 1)
        known = reduce(lambda a, b: a * b, [d for d in shape if not (isinstance(d, int) and d == -1)], 1)
        shape[shape.index(-1)] = tvm.sym.Analyzer().simplify(tirx.floordiv(numel, known))
    return c.emit(relax.op.reshape(x, shape))


@_converts(aten.expand_as.default)
def _expand_as(c: Converter, node: fx.Node) -> relax.Expr:
    return c.emit(relax.op.broadcast_to(c.tensor(node.args[0]), _shape(c.tensor(node.args[1]))))


@_converts(aten.index_select.default)
def _index_select(c: Converter, node: fx.Node) -> relax.Expr:
    x, dim, index = node.args
    table = c.tensor(x)
    return c.emit(relax.op.take(table, c.tensor(index), axis=_axis(dim, len(_shape(table)))))


@_converts(aten.select.int)
def _select(c: Converter, node: fx.Node) -> relax.Expr:
    x, dim, index = node.args
    value = c.tensor(x)
    axis = _axis(dim, len(_shape(value)))
    if index < 0:
        index = _shape(value)[axis] + index
    return c.emit(relax.op.take(value, relax.const(index, "int64"), axis=axis))


@_converts(aten.relu.default, aten.relu_.default)
def _relu(c: Converter, node: fx.Node) -> relax.Expr:
    return c.emit(relax.op.nn.relu(c.tensor(node.args[0])))


@_converts(aten.dropout.default, aten.feature_dropout.default)
def _dropout(c: Converter, node: fx.Node) -> relax.Expr:
    if len(node.args) > 2 and node.args[2]:
        raise _unsupported(node, "dropout in training mode; export a model in eval() mode")
    return c.tensor(node.args[0])


def _binary(op: Callable, *, true_division: bool = False) -> Callable[[Converter, fx.Node], relax.Expr]:
    """An elementwise binary op with PyTorch's type promotion (``true_division``: integers divide in float32)."""

    def convert(c: Converter, node: fx.Node) -> relax.Expr:
        if node.kwargs.get("alpha", 1) != 1:
            raise _unsupported(node, "alpha != 1")
        a, b = node.args[:2]
        dtype = _promoted(c, a, b)
        if true_division and not dtype.startswith("float"):
            dtype = "float32"
        va, vb = c.tensor(a, dtype), c.tensor(b, dtype)
        if not isinstance(a, fx.Node | Tensor) or not isinstance(b, fx.Node | Tensor):
            return c.emit(op(va, vb))
        out = c.emit(op(_aligned(c, va, _recorded_shape(a), _shape(vb), _recorded_shape(b)), vb))
        if out.ty.shape is None:
            raise _unsupported(node, "a broadcast between run-time sizes TVM cannot match")
        return out

    return convert


def _promoted(c: Converter, a: object, b: object) -> str:
    """PyTorch's result dtype of ``a op b`` (tensors, 0-d tensors and Python numbers)."""

    def operand(v: object) -> object:
        if not isinstance(v, fx.Node | Tensor):
            return v
        t = c.tensor(v)
        return torch.empty(() if not _shape(t) else (1,), dtype=getattr(torch, _dtype(t)))

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
    shape = _shape(value)
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
    return c.bb.match_cast(value, relax.TensorType(aligned, _dtype(value))) if changed else value


def _clamps(size: tirx.PrimExpr) -> bool:
    """Whether a size expression contains a ``min`` or ``max``."""
    if isinstance(size, tirx.Min | tirx.Max):
        return True
    return any(_clamps(getattr(size, part)) for part in ("a", "b") if hasattr(size, part))


_converts(aten.add.Tensor, aten.add_.Tensor)(_binary(relax.op.add))
_converts(aten.sub.Tensor, aten.sub_.Tensor)(_binary(relax.op.subtract))
_converts(aten.mul.Tensor, aten.mul_.Tensor)(_binary(relax.op.multiply))


@_converts(aten.linear.default)
def _linear(c: Converter, node: fx.Node) -> relax.Expr:
    x, weight = c.tensor(node.args[0]), node.args[1]
    bias = node.args[2] if len(node.args) > 2 else None
    w, b = c.array(weight), None if bias is None else c.array(bias)
    k = _static(_shape(x)[-1])
    if w is not None and w.ndim == 2 and _dtype(x) == "float32" and k is not None:
        if bias is None or b is not None:
            w_t = np.ascontiguousarray(w.T.astype(np.float32))
            bias_values = np.zeros(w.shape[0], np.float32) if b is None else b.astype(np.float32)
            return _rows(c, x, lambda flat: _dense_f32(c, flat, w_t, bias_values))
    out = c.emit(relax.op.matmul(x, c.emit(relax.op.permute_dims(c.tensor(weight)))))
    return out if bias is None else c.emit(relax.op.add(out, c.tensor(bias)))


def _dense_f32(c: Converter, x: relax.Expr, w_t: np.ndarray, bias: np.ndarray) -> relax.Expr:
    k, o = w_t.shape
    args = [x, relax.const(TK.pad_columns(w_t)), relax.const(bias)]
    return c.call_kernel(TK.dense_f32(k, o), "dense_f32", args, [_shape(x)[0], o], "float32")


_LIKE_MAKERS = (aten.new_zeros.default, aten.new_ones.default, aten.new_empty.default, aten.new_full.default)
_FILLS = {aten.new_ones.default: 1, aten.ones.default: 1, aten.new_full.default: None, aten.full.default: None}


@_converts(*ZERO_MAKERS, *_LIKE_MAKERS, aten.ones.default, aten.full.default)
def _filled(c: Converter, node: fx.Node) -> relax.Expr:
    """zeros / ones / full / empty (as zeros), fresh (``zeros(size)``) or like another tensor (``x.new_ones(size)``:
    a mean's row counts)."""
    recorded = node.meta.get("val")
    if node.target in _LIKE_MAKERS:
        like, size, *rest = node.args
        dtype = node.kwargs.get("dtype") or _dtype(c.tensor(like))
    else:
        size, *rest = node.args
        dtype = node.kwargs.get("dtype") or (recorded.dtype if isinstance(recorded, Tensor) else torch.float32)
    dtype = str(dtype).removeprefix("torch.")
    fill = _FILLS.get(node.target, 0)
    fill = rest[0] if fill is None else fill
    return c.emit(relax.op.full(c.value(size), relax.const(fill, dtype), dtype))


@_converts(aten.arange.default, aten.arange.start, aten.arange.start_step)
def _arange(c: Converter, node: fx.Node) -> relax.Expr:
    """``arange`` with a symbolic end (PyG's self-loop node ids, ``arange(0, num_nodes)``)."""
    bounds = list(c.value(node.args))
    start, end, step = ([0, *bounds] if node.target == aten.arange.default else bounds + [1])[:3]
    recorded = node.meta.get("val")
    dtype = node.kwargs.get("dtype") or (recorded.dtype if isinstance(recorded, Tensor) else torch.int64)
    return c.emit(relax.op.arange(start, end, step, str(dtype).removeprefix("torch.")))


@_converts(*SCATTER_ADDS)
def _scatter_add(c: Converter, node: fx.Node) -> relax.Expr:
    base, dim, index, src = node.args[:4]
    if node.target == aten.scatter_add_.default and len(base.users) > 1:
        raise _unsupported(node, "an in-place scatter_add_ on a tensor that is also read elsewhere")
    if node in c.aggregations:
        size = base.args[1] if base.target == aten.new_zeros.default else base.args[0]
        csr = _csr(c, c.aggregations[node], size, _dtype(c.tensor(base)))
        if csr is not None:
            return csr
    values = c.tensor(base)
    return c.emit(relax.op.scatter_elements(values, c.tensor(index), c.tensor(src), axis=dim, reduction="add"))


@_converts(aten.max.default, aten.amax.default)
def _max(c: Converter, node: fx.Node) -> relax.Expr:
    if len(node.args) > 1:
        raise _unsupported(node, "only the maximum over all elements is supported")
    return c.emit(relax.op.max(c.tensor(node.args[0])))


@_converts(aten.item.default)
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


_converts(operator.add)(_sizes(operator.add))
_converts(operator.sub)(_sizes(operator.sub))
_converts(operator.mul)(_sizes(operator.mul))


def _batch_norm_module(c: Converter, node: fx.Node) -> relax.Expr:
    """A lowered program's batch norm (a float island: ``ModeBatchNorm(x, weight, bias, mean, var)``)."""
    module = c.gm.get_submodule(node.target)
    return _batch_norm(c, node, *node.args, module.training, module.eps)


@_converts(aten.batch_norm.default)
def _batch_norm_op(c: Converter, node: fx.Node) -> relax.Expr:
    """An FP32 program's batch norm: ``batch_norm(x, weight, bias, mean, var, training, momentum, eps, cudnn)``."""
    x, weight, bias, mean, var, training, _momentum, eps = node.args[:8]
    return _batch_norm(c, node, x, weight, bias, mean, var, training, eps)


def _batch_norm(c: Converter, node: fx.Node, x, weight, bias, mean, var, training: bool, eps: float) -> relax.Expr:
    """Inference batch norm as ``x * alpha + beta`` per channel (dim 1), the form of PyTorch's CPU inference
    kernel, with ``alpha = w / sqrt(var + eps)`` and ``beta = b - mean * alpha`` folded at export."""
    stats = [c.array(v) for v in (mean, var)]
    if training or any(v is None for v in stats):
        raise _unsupported(node, "batch norm needs eval() mode and constant running statistics")
    value = c.tensor(x, "float32")
    channels = stats[0].shape[0]
    w = c.array(weight) if weight is not None else np.ones(channels, np.float32)
    b = c.array(bias) if bias is not None else np.zeros(channels, np.float32)
    if w is None or b is None:
        raise _unsupported(node, "batch norm needs a constant weight and bias")
    alpha = (w / np.sqrt(stats[1] + np.float32(eps))).astype(np.float32)
    beta = (b - stats[0] * alpha).astype(np.float32)
    view = [channels] + [1] * (len(_shape(value)) - 2)
    scaled = c.emit(relax.op.multiply(value, relax.const(alpha.reshape(view))))
    return c.emit(relax.op.add(scaled, relax.const(beta.reshape(view))))


MODULE_CONVERTERS: dict[type, Callable[[Converter, fx.Node], object]] = {ModeBatchNorm: _batch_norm_module}


_REDUCTIONS = {"sum": "add", "amax": "max", "amin": "min", "prod": "mul"}


@_converts(aten.scatter_reduce.two, aten.scatter_reduce_.two)
def _scatter_reduce(c: Converter, node: fx.Node) -> relax.Expr:
    """``scatter_reduce`` (e.g. PyG's max pooling). With ``include_self=False`` the base value does not take part,
    and rows that receive nothing keep it: those rows are found with a count."""
    base, dim, index, src, reduce_op = node.args[:5]
    include_self = arg(node, 5, "include_self", True)
    if reduce_op not in _REDUCTIONS:
        raise _unsupported(node, f"reduce={reduce_op!r}")
    if node.target == aten.scatter_reduce_.two and len(base.users) > 1:
        raise _unsupported(node, "an in-place scatter_reduce_ on a tensor that is also read elsewhere")
    values, idx, updates = c.tensor(base), c.tensor(index), c.tensor(src)
    mode = _REDUCTIONS[reduce_op]
    if include_self:
        return c.emit(relax.op.scatter_elements(values, idx, updates, axis=dim, reduction=mode))
    if mode in ("max", "min"):  # start each touched row from one of its own values
        start = c.emit(relax.op.scatter_elements(values, idx, updates, axis=dim, reduction="update"))
    else:  # from the identity of the reduction
        start = c.emit((relax.op.zeros if mode == "add" else relax.op.ones)(_shape(values), _dtype(values)))
    reduced = c.emit(relax.op.scatter_elements(start, idx, updates, axis=dim, reduction=mode))
    counts = c.emit(
        relax.op.scatter_elements(
            c.emit(relax.op.zeros(_shape(values), "int32")),
            idx,
            c.emit(relax.op.ones(_shape(updates), "int32")),
            axis=dim,
            reduction="add",
        )
    )
    untouched = c.emit(relax.op.equal(counts, relax.const(0, "int32")))
    return c.emit(relax.op.where(untouched, values, reduced))


# Float and tensor ATen ops beyond the core above live in their own modules, which register them here on import.
from . import tvm_activations, tvm_tensor_ops  # noqa: E402, F401

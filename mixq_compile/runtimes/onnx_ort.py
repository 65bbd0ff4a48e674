"""The ``onnx`` backend: the integer program as two ONNX graphs, run with onnxruntime (CPU).

The fx programs are translated node by node, one converter per instruction of :mod:`mixq_compile.integer.kernels`
and per ATen op that appears in structure and feature programs (:data:`CONVERTERS`). The graphs use ONNX's own
integer ops, chosen for what is exact *and* fast on onnxruntime's CPU kernels (TOOLCHAIN_NOTES.md §Q3, §Q7):

- codes of ≤ 8-bit grids travel as ``uint8`` holding ``code + 128``: ``QuantizeLinear``/``DequantizeLinear`` read and
  write them directly, and ``MatMulInteger`` takes them with the x zero-point as ``a_zero_point``. ORT's fast
  integer GEMM wants uint8 activations times int8 weights (the int8 x int8 path is ~10x slower);
- weights whose codes fit 2 or 4 bits are ``INT2``/``INT4`` initializers (packed, so model bytes follow the
  bit-width) cast to int8 once; ORT folds the cast when the session starts;
- sum aggregation over rows is a *sorted segment sum*: messages are ordered by target row, prefix-summed with
  ``CumSum`` and differenced at segment ends. In int32 this is exact (two's complement wrap-around cancels), and it
  is several times faster than ``ScatterElements(reduction="add")``; float messages are prefix-summed in float64.
  (``ScatterND(reduction="add")`` is faster still but loses updates on duplicate indices in ORT 1.32 when it runs
  multi-threaded, so it is not used.) Other scatters use ``ScatterElements``;
- topology-only work in the feature graph (edge sorting, segment bounds, index expansion) is *hoisted* into the
  structure graph, so ``load_artifact(..., cache_structure=True)`` computes it once per graph.

Codes handed between the two graphs and returned to the caller use the reference dtypes, so each runner returns
what the PyTorch executor returns; the structure runner appends the hoisted tensors after the frontier.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, fx

from ..errors import MixQError
from ..integer import kernels as K
from ..integer.program import IntegerProgram
from ..passes.train_mode import ModeBatchNorm, ModeDropout
from .base import Backend, Runner

aten = torch.ops.aten

#: opset 25 is the first with INT2 tensors (ORT 1.32 casts them); INT4 needs 21.
OPSET = 25
STRUCTURE_FILE = "structure.onnx"
FEATURES_FILE = "features.onnx"
#: onnxruntime session settings: exact int4 paths (no MatMulNBits with int8 activations) and no busy-waiting
#: threads, which would steal the CPU from whatever runs between two calls (other sessions, PyTorch).
SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "0", "session.intra_op.allow_spinning": "0"}
#: offset between int8 codes and the uint8 that carries them in the graph.
CODE_OFFSET = 128

_ONNX_TYPES = {
    torch.float32: TensorProto.FLOAT,
    torch.float64: TensorProto.DOUBLE,
    torch.int64: TensorProto.INT64,
    torch.int32: TensorProto.INT32,
    torch.int16: TensorProto.INT16,
    torch.int8: TensorProto.INT8,
    torch.uint8: TensorProto.UINT8,
    torch.bool: TensorProto.BOOL,
}
_TORCH_TYPES = {torch.empty(0, dtype=t).numpy().dtype: t for t in _ONNX_TYPES}
#: narrow integer initializers: (ONNX type, ml_dtypes type, lowest, highest), narrowest first.
_NARROW_INTS = ((TensorProto.INT2, ml_dtypes.int2, -2, 1), (TensorProto.INT4, ml_dtypes.int4, -8, 7))


class OnnxConversionError(MixQError, NotImplementedError):
    """An op of the program has no ONNX translation (or not with these arguments)."""


def _unsupported(node: fx.Node, why: str = "") -> OnnxConversionError:
    name = getattr(node.target, "__name__", str(node.target))
    detail = f" ({why})" if why else ""
    return OnnxConversionError(
        f"the onnx backend cannot translate {name!r} at node {node.name!r}{detail}; add a converter to "
        "mixq_compile.runtimes.onnx_ort.CONVERTERS, or export with backend='torch'"
    )


@dataclass(frozen=True)
class Value:
    """A tensor of the ONNX graph being built.

    ``dtype`` is the element type in the graph; ``offset`` marks uint8 tensors that carry int8 codes plus 128;
    ``symbolic`` marks a Python-level integer (a size) held as an int64 tensor of shape ``[1]``.
    """

    name: str
    dtype: torch.dtype
    offset: bool = False
    symbolic: bool = False

    @property
    def plain_dtype(self) -> torch.dtype:
        """The dtype of this value in the PyTorch program."""
        return torch.int8 if self.offset else self.dtype


class _Graph:
    """Builds one ONNX graph from one fx program: values, nodes, initializers, inputs and outputs."""

    def __init__(self, module: fx.GraphModule, prefix: str) -> None:
        self.module = module
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[Value] = []
        self.env: dict[fx.Node, object] = {}
        self.consts: dict[fx.Node, Tensor] = {}
        self.dtypes: dict[str, torch.dtype] = {}  # every emitted value's element type, by name
        self._small: dict[tuple, str] = {}
        self._count = 0

    # -- naming, nodes, constants ------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def emit(self, op_type: str, inputs: Sequence[str], dtype: torch.dtype, *, offset: bool = False,
             outputs: int = 1, **attrs) -> Value:  # fmt: skip
        """Append one node; returns its first output (``outputs`` > 1 names the rest ``<first>_<i>``, all of
        type ``dtype``)."""
        name = self.fresh(op_type.lower())
        names = [name] + [f"{name}_{i}" for i in range(1, outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=name, **attrs))
        self.dtypes.update(dict.fromkeys(names, dtype))
        return Value(name, dtype, offset)

    def initializer(self, array: np.ndarray, hint: str = "c") -> str:
        """An initializer; small constants are shared by value."""
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
        if key is not None and key in self._small:
            return self._small[key]
        name = self.fresh(hint)
        self.initializers[name] = numpy_helper.from_array(np.array(array, order="C"), name)
        if key is not None:
            self._small[key] = name
        return name

    def const(self, value, dtype: torch.dtype, hint: str = "c") -> str:
        """A constant of ``dtype`` from a Python number, list or tensor."""
        return self.initializer(torch.as_tensor(value).detach().to(dtype).numpy(), hint)

    def narrow_int(self, tensor: Tensor, hint: str) -> Value:
        """An int8 constant stored in the narrowest integer type that holds its values (INT2/INT4 packed), cast
        back to int8 in the graph (ORT folds the cast at session start): model bytes follow the bit-width."""
        low, high = (int(tensor.min()), int(tensor.max())) if tensor.numel() else (0, 0)
        for _onnx_type, np_type, lo, hi in _NARROW_INTS:
            if lo <= low and high <= hi:
                name = self.initializer(tensor.numpy().astype(np_type), hint)
                return self.emit("Cast", [name], torch.int8, to=TensorProto.INT8)
        return Value(self.initializer(tensor.numpy(), hint), torch.int8)

    # -- reading fx arguments ------------------------------------------------------------------------------------
    def value(self, arg, like: Value | None = None) -> Value:
        """The graph value of an fx argument; Python numbers become constants of ``like``'s dtype."""
        if isinstance(arg, fx.Node):
            found = self.env.get(arg)
            if not isinstance(found, Value):
                raise OnnxConversionError(f"node {arg.name!r} has no tensor value in the onnx graph")
            return found
        if isinstance(arg, bool | int | float):
            dtype = _scalar_dtype(arg, like)
            return Value(self.const(arg, dtype), dtype)
        raise OnnxConversionError(f"cannot use {arg!r} as a tensor in the onnx graph")

    def plain(self, value: Value) -> Value:
        """Offset codes back to the reference int8 (for outputs and ops that do not know the offset)."""
        if not value.offset:
            return value
        wide = self.emit("Cast", [value.name], torch.int32, to=TensorProto.INT32)
        shifted = self.emit("Sub", [wide.name, self.const(CODE_OFFSET, torch.int32)], torch.int32)
        return self.emit("Cast", [shifted.name], torch.int8, to=TensorProto.INT8)

    def as_offset(self, value: Value) -> Value:
        """Reference int8 codes (e.g. a frontier input) to offset codes."""
        if value.offset:
            return value
        if value.dtype != torch.int8:
            raise OnnxConversionError(f"expected int8 codes, got {value.dtype}")
        wide = self.emit("Cast", [value.name], torch.int32, to=TensorProto.INT32)
        shifted = self.emit("Add", [wide.name, self.const(CODE_OFFSET, torch.int32)], torch.int32)
        return replace(self.emit("Cast", [shifted.name], torch.uint8, to=TensorProto.UINT8), offset=True)

    def cast(self, value: Value, dtype: torch.dtype) -> Value:
        value = self.plain(value)
        if value.dtype == dtype:
            return value
        return replace(self.emit("Cast", [value.name], dtype, to=_ONNX_TYPES[dtype]), symbolic=value.symbolic)

    def ints(self, arg) -> Value:
        """A shape-like argument (list of ints and sizes, a tensor, or a 1-D int64 value) as a 1-D int64 value."""
        if isinstance(arg, Value):
            return arg
        if isinstance(arg, fx.Node):
            found = self.value(arg)
            if found.symbolic:
                return found
            return self.emit("Reshape", [self.cast(found, torch.int64).name, self.const([-1], torch.int64)],
                             torch.int64)  # fmt: skip
        if isinstance(arg, int):
            return Value(self.const([arg], torch.int64), torch.int64)
        parts, pending = [], []
        for item in arg:
            if isinstance(item, int):
                pending.append(item)
                continue
            if pending:
                parts.append(self.const(pending, torch.int64))
                pending = []
            parts.append(self.ints(item).name)
        if pending or not parts:
            parts.append(self.const(pending, torch.int64))
        if len(parts) == 1:
            return Value(parts[0], torch.int64)
        return self.emit("Concat", parts, torch.int64, axis=0)

    def scalar(self, arg, dtype: torch.dtype) -> Value:
        """A 0-d tensor from a number or a size (Range and similar ops want scalars)."""
        if not isinstance(arg, fx.Node):
            return Value(self.const(arg, dtype), dtype)
        found = self.cast(self.value(arg), dtype)
        return self.emit("Reshape", [found.name, self.const(np.zeros(0, np.int64), torch.int64)], dtype)

    def shape(self, value: Value) -> Value:
        return self.emit("Shape", [value.name], torch.int64)

    # -- the translation -----------------------------------------------------------------------------------------
    def convert(self, inputs: Sequence[Tensor]) -> None:
        """Translate every node; graph inputs take the dtype and rank of ``inputs``."""
        placeholders = [n for n in self.module.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(inputs):
            raise OnnxConversionError(f"program has {len(placeholders)} inputs, {len(inputs)} example tensors given")
        for node, example in zip(placeholders, inputs):
            self.inputs.append(_value_info(node.name, example.dtype, example.shape))
            value = Value(node.name, example.dtype)
            self.env[node] = self.as_offset(value) if _holds_codes(node) else value
        for node in self.module.graph.nodes:
            if node.op == "get_attr":
                self.env[node] = self.get_attr(node)
            elif node.op == "call_function":
                converter = CONVERTERS.get(node.target)
                if converter is None:
                    raise _unsupported(node)
                self.env[node] = converter(self, node)
                if _mutates_first_arg(node):  # later readers of the mutated tensor see the result
                    self.env[node.args[0]] = self.env[node]
            elif node.op == "call_module":
                self.env[node] = self.call_module(node)
            elif node.op == "output":
                results = node.args[0] if isinstance(node.args[0], list | tuple) else (node.args[0],)
                self.outputs = [self.plain(self.value(r)) for r in results]

    def get_attr(self, node: fx.Node) -> Value:
        tensor = self.module.get_buffer(node.target) if hasattr(self.module, node.target) else None
        if not isinstance(tensor, Tensor):
            tensor = getattr(self.module, node.target)
        tensor = tensor.detach().cpu().contiguous()
        self.consts[node] = tensor
        if tensor.dtype == torch.int8:
            return self.narrow_int(tensor, node.target)
        return Value(self.initializer(tensor.numpy(), node.target), tensor.dtype)

    def call_module(self, node: fx.Node) -> Value:
        module = self.module.get_submodule(node.target)
        if isinstance(module, ModeDropout):
            return self.value(node.args[0])
        if isinstance(module, ModeBatchNorm):
            return _batch_norm(self, node, module)
        raise _unsupported(node, f"module {type(module).__name__}")

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            self.prefix.strip("_") or "graph",
            self.inputs,
            [_value_info(v.name, v.dtype, None) for v in self.outputs],
            list(self.initializers.values()),
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mixq_compile")


def _mutates_first_arg(node: fx.Node) -> bool:
    target = node.target
    return (
        isinstance(target, torch._ops.OpOverload)
        and target._schema.is_mutable
        and bool(node.args)
        and isinstance(node.args[0], fx.Node)
    )


def _scalar_dtype(number, like: Value | None) -> torch.dtype:
    """The dtype a Python number takes next to a tensor (PyTorch's promotion for tensor-scalar ops)."""
    if like is None:
        return torch.float32 if isinstance(number, float) else torch.int64
    dtype = like.plain_dtype
    if isinstance(number, float) and not dtype.is_floating_point:
        return torch.float32
    return dtype


def _holds_codes(node: fx.Node) -> bool:
    """Whether a placeholder carries int8 codes (a frontier of codes): such inputs switch to offset codes."""
    val = node.meta.get("val")
    return isinstance(val, Tensor) and val.dtype == torch.int8


def _value_info(name: str, dtype: torch.dtype, shape) -> onnx.ValueInfoProto:
    """Graph input/output type: every dim symbolic except size-1 dims (broadcast columns such as ``[E, 1]`` edge
    weights); no shape at all when ``shape`` is None (outputs, typed after an example run in :func:`_finish`)."""
    if shape is None:
        return helper.make_tensor_value_info(name, _ONNX_TYPES[dtype], None)
    dims = [1 if size == 1 else f"{name}_{i}" for i, size in enumerate(shape)]
    return helper.make_tensor_value_info(name, _ONNX_TYPES[dtype], dims)


def _arg(node: fx.Node, index: int, name: str, default=None):
    """Positional-or-keyword argument of an fx call."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


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


def _to_codes(g: _Graph, real: Value, zero: Tensor, qmin: int, qmax: int) -> Value:
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


def _quantize(g: _Graph, node: fx.Node) -> Value:
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


def _dequantize(g: _Graph, node: fx.Node) -> Value:
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


def _dequantize_acc(g: _Graph, node: fx.Node) -> Value:
    acc, scale_node = node.args
    real = g.cast(g.value(acc), torch.float32)
    return g.emit("Mul", [real.name, g.const(g.consts[scale_node], torch.float32)], torch.float32)


def _center(g: _Graph, node: fx.Node) -> Value:
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


def _centered(g: _Graph, q: Value, zero: Tensor) -> Value:
    zero = zero.to(torch.int32) + (CODE_OFFSET if q.offset else 0)
    wide = g.emit("Cast", [q.name], torch.int32, to=TensorProto.INT32) if q.dtype != torch.int32 else q
    if not zero.any():
        return wide
    return g.emit("Sub", [wide.name, g.const(zero, torch.int32)], torch.int32)


def _requantize(g: _Graph, node: fx.Node) -> Value:
    """``clamp(round(acc * M) + zero)``: float product as in the reference, then :func:`_to_codes`."""
    acc, multiplier, zero, qmin, qmax = node.args
    real = g.cast(g.value(acc), torch.float32)
    scaled = g.emit("Mul", [real.name, g.const(g.consts[multiplier], torch.float32)], torch.float32)
    return _to_codes(g, scaled, g.consts[zero], qmin, qmax)


def _requantize_fixed_point(g: _Graph, node: fx.Node) -> Value:
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


def _relu_codes(g: _Graph, node: fx.Node) -> Value:
    q = g.value(node.args[0])
    zero = g.consts[node.args[1]].to(torch.int32) + (CODE_OFFSET if q.offset else 0)
    return replace(g.emit("Max", [q.name, g.const(zero, q.dtype)], q.dtype), offset=q.offset)


def _linear_int(g: _Graph, node: fx.Node) -> Value:
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


def _binary_int(op_type: str) -> Callable[[_Graph, fx.Node], Value]:
    def convert(g: _Graph, node: fx.Node) -> Value:
        a, b = (g.cast(g.value(x), torch.int32) for x in node.args)
        return g.emit(op_type, [a.name, b.name], torch.int32)

    convert.__doc__ = f"int32 {op_type} of two accumulators."
    return convert


def _row_index(g: _Graph, index: fx.Node, src: fx.Node) -> Value | None:
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


def _segment_sum(g: _Graph, messages: Value, rows: Value, num_rows: Value) -> Value:
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


def _broadcast_column(g: _Graph, column: Value, like: Value) -> Value:
    """A 1-D per-row tensor reshaped to ``[R, 1, ..., 1]`` with the rank of ``like``."""
    rank = g.emit("Size", [g.shape(like).name], torch.int64)
    trailing = g.emit("Sub", [rank.name, g.const(1, torch.int64)], torch.int64)
    ones = g.emit("Expand", [g.const([1], torch.int64), g.emit("Reshape", [trailing.name, g.const([1], torch.int64)],
                  torch.int64).name], torch.int64)  # fmt: skip
    shape = g.emit("Concat", [g.const([-1], torch.int64), ones.name], torch.int64, axis=0)
    return g.emit("Reshape", [column.name, shape.name], column.dtype)


def _zeros(g: _Graph, size, dtype: torch.dtype) -> Value:
    """Zeros of a (possibly symbolic) size."""
    value = numpy_helper.from_array(np.zeros(1, dtype=torch.empty(0, dtype=dtype).numpy().dtype))
    return g.emit("ConstantOfShape", [g.ints(size).name], dtype, value=value)


def _scatter_into_zeros(g: _Graph, messages: Value, index: fx.Node, src: fx.Node, size, dim: int) -> Value:
    """Sum-scatter ``messages`` into zeros of ``size``: a segment sum for row scatters, else ScatterElements."""
    rows = _row_index(g, index, src) if dim == 0 else None
    if rows is not None:
        num_rows = g.emit("Slice", [g.ints(size).name, g.const([0], torch.int64), g.const([1], torch.int64)],
                          torch.int64)  # fmt: skip
        return _segment_sum(g, messages, rows, num_rows)
    zeros = _zeros(g, size, messages.dtype)
    return g.emit("ScatterElements", [zeros.name, g.value(index).name, messages.name], messages.dtype, axis=dim,
                  reduction="add")  # fmt: skip


def _scatter_sum_int(g: _Graph, node: fx.Node) -> Value:
    acc, dim, index, size = node.args
    return _scatter_into_zeros(g, g.cast(g.value(acc), torch.int32), index, acc, size, dim)


def _index_sum_int(g: _Graph, node: fx.Node) -> Value:
    acc, dim, index, size = node.args
    if dim != 0:
        raise _unsupported(node, f"index_add along dim {dim}; only dim 0 is translated")
    rows = g.cast(g.value(index), torch.int64)
    num_rows = g.emit("Slice", [g.ints(size).name, g.const([0], torch.int64), g.const([1], torch.int64)], torch.int64)
    return _segment_sum(g, g.cast(g.value(acc), torch.int32), rows, num_rows)


def _scatter_select(g: _Graph, base: Value, index: Value, src: Value, dim: int, reduce: str) -> Value:
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


def _scatter_select_int(g: _Graph, node: fx.Node) -> Value:
    acc, dim, index, size, reduce = node.args
    base = _zeros(g, size, torch.int32)
    return _scatter_select(g, base, g.value(index), g.cast(g.value(acc), torch.int32), dim, reduce)


# ----------------------------------------------------------------------------------------------------------------
# ATen ops (float parts, FP32 programs, structure programs)
# ----------------------------------------------------------------------------------------------------------------
def _result_dtype(g: _Graph, node: fx.Node, operands: Sequence) -> torch.dtype:
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


def _elementwise(op_type: str, *, boolean: bool = False) -> Callable[[_Graph, fx.Node], Value]:
    """A binary op with PyTorch's type promotion (a Python scalar takes the tensor's dtype)."""

    def convert(g: _Graph, node: fx.Node) -> Value:
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


def _arg_dtype(g: _Graph, arg) -> torch.dtype:
    if isinstance(arg, fx.Node):
        return g.value(arg).plain_dtype
    return torch.float32 if isinstance(arg, float) else torch.int64


def _is_size(g: _Graph, arg) -> bool:
    """A Python-level integer: a symbolic size or an int literal next to one."""
    if isinstance(arg, fx.Node):
        found = g.env.get(arg)
        return isinstance(found, Value) and found.symbolic
    return isinstance(arg, int)


def _size_arith(g: _Graph, op_type: str, a, b) -> Value:
    va, vb = g.ints(a), g.ints(b)
    return replace(g.emit(op_type, [va.name, vb.name], torch.int64), symbolic=True)


def _sym_operator(op_type: str) -> Callable[[_Graph, fx.Node], Value]:
    def convert(g: _Graph, node: fx.Node) -> Value:
        return _size_arith(g, op_type, *node.args)

    convert.__doc__ = f"{op_type} of two sizes (Python ints of the traced program)."
    return convert


def _unary(op_type: str, **attrs) -> Callable[[_Graph, fx.Node], Value]:
    def convert(g: _Graph, node: fx.Node) -> Value:
        x = g.plain(g.value(node.args[0]))
        return g.emit(op_type, [x.name], x.dtype, **attrs)

    convert.__doc__ = f"Elementwise {op_type}."
    return convert


def _identity(g: _Graph, node: fx.Node) -> Value:
    return g.value(node.args[0])


def _dropout(g: _Graph, node: fx.Node) -> Value:
    if _arg(node, 2, "train", False):
        raise _unsupported(node, "dropout in training mode; export a model in eval mode")
    return g.value(node.args[0])


def _leaky_relu(g: _Graph, node: fx.Node) -> Value:
    x = g.value(node.args[0])
    return g.emit("LeakyRelu", [x.name], x.dtype, alpha=float(_arg(node, 1, "negative_slope", 0.01)))


def _pow(g: _Graph, node: fx.Node) -> Value:
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


def _clamp(g: _Graph, node: fx.Node) -> Value:
    x = g.plain(g.value(node.args[0]))
    low, high = _arg(node, 1, "min"), _arg(node, 2, "max")
    names = [x.name] + ["" if v is None else g.value(v, x).name for v in (low, high)]
    return g.emit("Clip", names, x.dtype)


def _masked_fill(g: _Graph, node: fx.Node) -> Value:
    x, mask, fill = node.args
    x = g.plain(g.value(x))
    return g.emit("Where", [g.value(mask).name, g.value(fill, x).name, x.name], x.dtype)


def _where(g: _Graph, node: fx.Node) -> Value:
    cond, a, b = node.args
    dtype = _result_dtype(g, node, (a, b))
    va, vb = (g.cast(g.value(x, Value("", dtype)), dtype) for x in (a, b))
    return g.emit("Where", [g.value(cond).name, va.name, vb.name], dtype)


def _linear(g: _Graph, node: fx.Node) -> Value:
    """Float ``x @ W^T + b``; a constant weight is stored transposed."""
    x, weight = g.value(node.args[0]), node.args[1]
    bias = _arg(node, 2, "bias")
    if weight in g.consts:
        w_t = g.initializer(g.consts[weight].t().contiguous().numpy(), f"{weight.target}_t")
    else:
        w_t = g.emit("Transpose", [g.value(weight).name], torch.float32, perm=[1, 0]).name
    out = g.emit("MatMul", [x.name, w_t], torch.float32)
    if bias is None:
        return out
    return g.emit("Add", [out.name, g.value(bias).name], torch.float32)


def _batch_norm(g: _Graph, node: fx.Node, module: ModeBatchNorm) -> Value:
    """Inference batch norm over dim 1 (running statistics), from a :class:`ModeBatchNorm` call."""
    return _batch_norm_eval(g, node, node.args[:5], module.eps)


def _aten_batch_norm(g: _Graph, node: fx.Node) -> Value:
    """``aten.batch_norm`` of an FP32 program (captured in eval mode)."""
    if _arg(node, 5, "training", False):
        raise _unsupported(node, "batch norm in training mode; export a model in eval mode")
    return _batch_norm_eval(g, node, node.args[:5], float(_arg(node, 7, "eps", 1e-5)))


def _batch_norm_eval(g: _Graph, node: fx.Node, args: Sequence, eps: float) -> Value:
    x, weight, bias, mean, var = (g.value(a) if a is not None else None for a in args)
    if mean is None or var is None:
        raise _unsupported(node, "batch norm without running statistics")
    channels = g.emit("Shape", [mean.name], torch.int64)
    weight = weight or g.emit("Expand", [g.const(1.0, torch.float32), channels.name], torch.float32)
    bias = bias or g.emit("Expand", [g.const(0.0, torch.float32), channels.name], torch.float32)
    names = [x.name, weight.name, bias.name, mean.name, var.name]
    return g.emit("BatchNormalization", names, torch.float32, epsilon=eps)


def _sym_size(g: _Graph, node: fx.Node) -> Value:
    x, dim = node.args
    shape = g.shape(g.value(x))
    return replace(g.emit("Gather", [shape.name, g.const([dim], torch.int64)], torch.int64), symbolic=True)


def _item(g: _Graph, node: fx.Node) -> Value:
    x = g.cast(g.value(node.args[0]), torch.int64)
    return replace(g.emit("Reshape", [x.name, g.const([1], torch.int64)], torch.int64), symbolic=True)


def _reduce(op_type: str) -> Callable[[_Graph, fx.Node], Value]:
    def convert(g: _Graph, node: fx.Node) -> Value:
        x = g.plain(g.value(node.args[0]))
        dims = _arg(node, 1, "dim")
        keepdim = int(bool(_arg(node, 2, "keepdim", False)))
        inputs = [x.name] if dims is None else [x.name, g.const(list(dims) if isinstance(dims, list | tuple)
                                                                 else [dims], torch.int64)]  # fmt: skip
        return g.emit(op_type, inputs, x.dtype, keepdims=keepdim)

    convert.__doc__ = f"{op_type} over the given dims (all dims when none are given)."
    return convert


def _view(g: _Graph, node: fx.Node) -> Value:
    """``view``/``reshape``: ``allowzero=1`` so a literal 0 means size 0, as in PyTorch."""
    x = g.value(node.args[0])
    return replace(g.emit("Reshape", [x.name, g.ints(node.args[1]).name], x.dtype, allowzero=1), offset=x.offset)


def _expand_as(g: _Graph, node: fx.Node) -> Value:
    x, other = (g.value(a) for a in node.args)
    return replace(g.emit("Expand", [x.name, g.shape(other).name], x.dtype), offset=x.offset)


def _expand(g: _Graph, node: fx.Node) -> Value:
    """``expand``: -1 (keep the dim) becomes 1, which ONNX's broadcasting Expand keeps as well."""
    x, sizes = g.value(node.args[0]), node.args[1]
    sizes = [1 if s == -1 else s for s in sizes]
    return replace(g.emit("Expand", [x.name, g.ints(sizes).name], x.dtype), offset=x.offset)


def _index_select(g: _Graph, node: fx.Node) -> Value:
    x, dim, index = node.args
    x = g.value(x)
    return replace(g.emit("Gather", [x.name, g.value(index).name], x.dtype, axis=dim), offset=x.offset)


def _select(g: _Graph, node: fx.Node) -> Value:
    x, dim, index = node.args
    x = g.value(x)
    return replace(g.emit("Gather", [x.name, g.scalar(index, torch.int64).name], x.dtype, axis=dim), offset=x.offset)


def _slice(g: _Graph, node: fx.Node) -> Value:
    x = g.value(node.args[0])
    dim, start, end, step = (_arg(node, i, n, d) for i, n, d in ((1, "dim", 0), (2, "start", None),
                                                                 (3, "end", None), (4, "step", 1)))  # fmt: skip
    start = 0 if start is None else start
    end = torch.iinfo(torch.int64).max if end is None else end
    bounds = [g.ints([start]).name, g.ints([end]).name]
    names = [x.name, *bounds, g.const([dim], torch.int64), g.const([step], torch.int64)]
    return replace(g.emit("Slice", names, x.dtype), offset=x.offset)


def _index(g: _Graph, node: fx.Node) -> Value:
    """``x[..., idx, ...]`` with one index tensor: a boolean mask is ``Compress``, integers are ``Gather``."""
    x, indices = g.value(node.args[0]), node.args[1]
    used = [(axis, i) for axis, i in enumerate(indices) if i is not None]
    if len(used) != 1:
        raise _unsupported(node, "indexing with more than one index tensor")
    axis, index = used[0]
    index = g.value(index)
    op_type = "Compress" if index.dtype == torch.bool else "Gather"
    return replace(g.emit(op_type, [x.name, index.name], x.dtype, axis=axis), offset=x.offset)


def _unsqueeze(g: _Graph, node: fx.Node) -> Value:
    x = g.value(node.args[0])
    return replace(g.emit("Unsqueeze", [x.name, g.const([node.args[1]], torch.int64)], x.dtype), offset=x.offset)


def _squeeze(g: _Graph, node: fx.Node) -> Value:
    x = g.value(node.args[0])
    dims = node.args[1] if len(node.args) > 1 else None
    inputs = [x.name] if dims is None else [x.name, g.const(list(dims) if isinstance(dims, list | tuple)
                                                           else [dims], torch.int64)]  # fmt: skip
    return replace(g.emit("Squeeze", inputs, x.dtype), offset=x.offset)


def _cat(g: _Graph, node: fx.Node) -> Value:
    values = [g.value(t) for t in node.args[0]]
    dim = _arg(node, 1, "dim", 0)
    if not all(v.offset for v in values):
        dtype = _result_dtype(g, node, node.args[0])
        values = [g.cast(v, dtype) for v in values]
    return replace(g.emit("Concat", [v.name for v in values], values[0].dtype, axis=dim), offset=values[0].offset)


def _repeat(g: _Graph, node: fx.Node) -> Value:
    x, repeats = g.value(node.args[0]), node.args[1]
    val = node.args[0].meta.get("val")
    if not isinstance(val, Tensor) or val.dim() != len(repeats):
        raise _unsupported(node, "repeat with a different number of repeats than dims")
    return replace(g.emit("Tile", [x.name, g.ints(repeats).name], x.dtype), offset=x.offset)


def _arange(g: _Graph, node: fx.Node) -> Value:
    if node.target == aten.arange.default:
        start, end, step = 0, node.args[0], 1
    else:
        start, end = node.args[:2]
        step = _arg(node, 2, "step", 1)
    dtype = node.kwargs.get("dtype") or _result_dtype(g, node, (start, end))
    names = [g.scalar(v, dtype).name for v in (start, end, step)]
    return g.emit("Range", names, dtype)


def _filled(fill, self_index: int | None, size_index: int) -> Callable[[_Graph, fx.Node], Value]:
    """``zeros``/``ones``/``new_zeros``/``new_ones``/``full``: ``ConstantOfShape``; dtype from the ``dtype`` kwarg,
    else from ``self`` (``new_*``), else float32."""

    def convert(g: _Graph, node: fx.Node) -> Value:
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


def _scatter_add(g: _Graph, node: fx.Node) -> Value:
    """Float scatter-add: into fresh zeros by a row index it is a segment sum (float64 prefix sums), otherwise
    ``ScatterElements(reduction="add")`` on the base."""
    base, dim, index, src = node.args
    base_value, messages = g.value(base), g.value(src)
    if _is_zeros(base) and dim == 0 and _row_index(g, index, src) is not None:
        return _scatter_into_zeros(g, messages, index, src, base.args[1] if base.target != aten.zeros.default
                                   else base.args[0], dim)  # fmt: skip
    return g.emit("ScatterElements", [base_value.name, g.value(index).name, messages.name], base_value.dtype,
                  axis=dim, reduction="add")  # fmt: skip


def _index_add(g: _Graph, node: fx.Node) -> Value:
    base, dim, index, src = node.args[:4]
    if dim != 0:
        raise _unsupported(node, f"index_add along dim {dim}; only dim 0 is translated")
    base_value = g.value(base)
    num_rows = g.emit("Gather", [g.shape(base_value).name, g.const([0], torch.int64)], torch.int64)
    total = _segment_sum(g, g.value(src), g.cast(g.value(index), torch.int64), num_rows)
    if _is_zeros(base):
        return total
    return g.emit("Add", [base_value.name, total.name], base_value.dtype)


def _is_zeros(node) -> bool:
    return isinstance(node, fx.Node) and node.target in (aten.new_zeros.default, aten.zeros.default)


def _scatter_reduce(g: _Graph, node: fx.Node) -> Value:
    base, dim, index, src, reduce = node.args[:5]
    include_self = _arg(node, 5, "include_self", True)
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
    raise _unsupported(node, f"scatter_reduce {reduce!r} with include_self={include_self}")


#: fx call target -> converter. Every instruction of ``kernels.INSTRUCTIONS`` and the ATen ops of captured programs.
CONVERTERS: dict[object, Callable[[_Graph, fx.Node], Value]] = {
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
    aten.mul.Tensor: _elementwise("Mul"),
    aten.mul_.Tensor: _elementwise("Mul"),
    aten.div.Tensor: _elementwise("Div"),
    aten.eq.Tensor: _elementwise("Equal", boolean=True),
    aten.eq.Scalar: _elementwise("Equal", boolean=True),
    aten.ne.Tensor: _elementwise("NotEqual", boolean=True),
    aten.ne.Scalar: _elementwise("NotEqual", boolean=True),
    aten.pow.Tensor_Scalar: _pow,
    aten.pow_.Scalar: _pow,
    aten.relu.default: _unary("Relu"),
    aten.relu_.default: _unary("Relu"),
    aten.sigmoid.default: _unary("Sigmoid"),
    aten.exp.default: _unary("Exp"),
    aten.tanh.default: _unary("Tanh"),
    aten.leaky_relu.default: _leaky_relu,
    aten.clamp.default: _clamp,
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
    aten.arange.start: _arange,
    aten.arange.default: _arange,
    aten.ones.default: _filled(1, None, 0),
    aten.zeros.default: _filled(0, None, 0),
    aten.new_zeros.default: _filled(0, 0, 1),
    aten.new_ones.default: _filled(1, 0, 1),
    aten.full.default: _filled(None, None, 0),
    aten.scatter_add.default: _scatter_add,
    aten.scatter_add_.default: _scatter_add,
    aten.index_add.default: _index_add,
    aten.index_add_.default: _index_add,
    aten.scatter_reduce.two: _scatter_reduce,
    aten.scatter_reduce_.two: _scatter_reduce,
}


# ----------------------------------------------------------------------------------------------------------------
# graph passes: dead code, hoisting topology work into the structure graph
# ----------------------------------------------------------------------------------------------------------------
def _remove_dead(g: _Graph, also_keep: Sequence[str] = ()) -> None:
    """Drop nodes and initializers that neither the outputs nor ``also_keep`` need (converters leave unused
    helpers, e.g. the expanded index of a scatter that became a segment sum)."""
    needed = {v.name for v in g.outputs} | set(also_keep)
    kept = []
    for node in reversed(g.nodes):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    g.nodes = kept[::-1]
    g.initializers = {name: t for name, t in g.initializers.items() if name in needed}


#: ops whose output has the shape of their first input: ``Shape`` of their output is ``Shape`` of that input.
_SHAPE_PRESERVING = {"QuantizeLinear", "DequantizeLinear", "Cast", "Clip", "Relu", "LeakyRelu", "Sigmoid", "Identity"}
#: binary ops that keep the shape of their first input when the second is a scalar constant.
_SCALAR_BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min"}


def _keeps_shape(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> bool:
    if node.op_type in _SHAPE_PRESERVING:
        return True
    if node.op_type in _SCALAR_BINARY and node.input[1] in initializers:
        dims = initializers[node.input[1]].dims
        return len(dims) <= 1 and math.prod(dims) == 1
    return False


def _hoist(structure: _Graph, features: _Graph, topology_inputs: set[str], model_inputs: set[str]) -> list[str]:
    """Move feature-graph nodes that depend only on topology (integer inputs, frontier, input *shapes*) into the
    structure graph, so a cached structure run does them once. Returns the values handed over (new outputs of the
    structure graph, new inputs of the feature graph, in order).

    ``Shape`` of a value computed elementwise from an input reads that input instead (e.g. the node count from
    the quantized features). Nodes that read only initializers stay (ORT folds them; moving them would turn
    weights into inputs), but are copied along when a hoisted node reads them.
    """
    constant = set(features.initializers)
    topology = set(topology_inputs)
    same_shape: dict[str, str] = {}
    hoisted, copied = [], []
    for node in features.nodes:
        inputs = [name for name in node.input if name]
        if _keeps_shape(node, features.initializers):
            same_shape[node.output[0]] = same_shape.get(inputs[0], inputs[0])
        if node.op_type == "Shape" and same_shape.get(inputs[0], inputs[0]) in model_inputs | topology:
            node.input[0] = same_shape.get(inputs[0], inputs[0])
            topology.update(node.output)
            hoisted.append(node)
        elif all(n in constant for n in inputs):
            constant.update(node.output)
            copied.append(node)
        elif all(n in topology or n in constant for n in inputs):
            topology.update(node.output)
            hoisted.append(node)
    if not hoisted:
        return []
    moved = {id(n) for n in hoisted}
    remaining = [n for n in features.nodes if id(n) not in moved]
    read_later = {name for n in remaining for name in n.input} | {v.name for v in features.outputs}
    handed = [name for n in hoisted for name in n.output if name in read_later]
    needed = {name for n in hoisted for name in n.input}
    copies = []
    for node in reversed(copied):
        if any(o in needed for o in node.output):
            copies.append(node)
            needed.update(node.input)
    structure.nodes += copies[::-1] + hoisted
    structure.initializers.update({k: v for k, v in features.initializers.items() if k in needed})
    features.nodes = remaining
    return handed


def _to_value_info(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    """Type of a handed-over or output tensor from an example run: its dtype and rank, every dim symbolic."""
    return _value_info(name, _TORCH_TYPES[array.dtype], array.shape)


def _session(model: onnx.ModelProto | str | Path, threads: int = 2):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _finish(graph: _Graph, extra_outputs: Sequence[str], extra_dtypes: dict[str, torch.dtype],
            feeds: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, list[np.ndarray]]:  # fmt: skip
    """The checked model of ``graph`` with typed outputs, and its outputs on ``feeds`` (one example run, which
    also gives the outputs' ranks: ``onnx.checker`` wants a shape on every graph output)."""
    model = graph.model()
    del model.graph.output[:]
    names = [v.name for v in graph.outputs] + list(extra_outputs)
    dtypes = [v.dtype for v in graph.outputs] + [extra_dtypes[n] for n in extra_outputs]
    model.graph.output.extend(helper.make_tensor_value_info(n, _ONNX_TYPES[d], None) for n, d in zip(names, dtypes))
    results = _session(model, threads=1).run(names, feeds)
    del model.graph.output[:]
    model.graph.output.extend(_to_value_info(n, r) for n, r in zip(names, results))
    onnx.checker.check_model(model)
    return model, results


def convert_program(program: IntegerProgram, example_inputs: Sequence[Tensor]) -> tuple[onnx.ModelProto,
                                                                                        onnx.ModelProto]:  # fmt: skip
    """The structure and feature ONNX models of ``program`` (see module docstring)."""
    example_inputs = tuple(t.detach().cpu() for t in example_inputs)
    frontier = tuple(t.detach().cpu() for t in program.structure(*example_inputs))
    structure, features = _Graph(program.structure, "s_"), _Graph(program.features, "f_")
    structure.convert(example_inputs)
    features.convert(example_inputs + frontier)
    placeholders = [n.name for n in program.features.graph.nodes if n.op == "placeholder"]
    model_inputs, frontier_names = placeholders[: len(example_inputs)], placeholders[len(example_inputs) :]
    structure.outputs = [
        replace(structure.emit("Identity", [v.name], v.dtype), name=name)
        for v, name in zip(structure.outputs, frontier_names)
    ]
    for node, name in zip(structure.nodes[-len(frontier_names) :], frontier_names):
        node.output[0] = name
    _remove_dead(features)
    topology = set(frontier_names) | {n for n, t in zip(model_inputs, example_inputs) if not t.is_floating_point()}
    handed = _hoist(structure, features, topology, set(model_inputs))
    _remove_dead(features)
    _remove_dead(structure, also_keep=handed)
    feeds = {name: t.numpy() for name, t in zip(model_inputs, example_inputs)}
    structure_model, handed_values = _finish(structure, handed, features.dtypes, feeds)
    features.inputs += [_to_value_info(n, a) for n, a in zip(handed, handed_values[len(frontier_names) :])]
    feeds.update({n: a for n, a in zip(frontier_names + handed, handed_values)})
    features_model, _ = _finish(features, (), {}, feeds)
    return structure_model, features_model


# ----------------------------------------------------------------------------------------------------------------
# the backend
# ----------------------------------------------------------------------------------------------------------------
class OnnxBackend(Backend):
    name = "onnx"

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def versions(self) -> dict[str, str]:
        import onnxruntime

        return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}

    def export(self, program: IntegerProgram, example_inputs: tuple[Tensor, ...], directory: Path) -> dict:
        structure, features = convert_program(program, example_inputs)
        onnx.save(structure, directory / STRUCTURE_FILE)
        onnx.save(features, directory / FEATURES_FILE)
        return {"structure": STRUCTURE_FILE, "features": FEATURES_FILE, "opset": OPSET}

    def load(self, directory: Path, entries: dict) -> tuple[Runner, Runner]:
        self.require()
        return load_onnx(directory / entries["structure"]), load_onnx(directory / entries["features"])


def load_onnx(path: Path) -> Runner:
    """An ONNX model as a callable on torch tensors returning a tuple of torch tensors (2 intra-op threads)."""
    session = _session(path)
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: Tensor) -> tuple[Tensor, ...]:
        feeds = {name: t.detach().cpu().contiguous().numpy() for name, t in zip(names, inputs)}
        return tuple(torch.from_numpy(out) for out in session.run(None, feeds))

    return run

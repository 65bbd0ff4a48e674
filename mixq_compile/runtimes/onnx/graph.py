"""The ONNX graph builder of the ``onnx`` backend: values, nodes, initializers, and the node-by-node walk of an fx
program that hands each node to its converter (:mod:`mixq_compile.runtimes.onnx.converters`).

Codes of ≤ 8-bit grids travel through the graph as ``uint8`` holding ``code + 128`` (:data:`CODE_OFFSET`, see
:mod:`mixq_compile.runtimes.onnx.backend`); :class:`Value` records which tensors carry them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, fx

from ...errors import MixQError
from ..converter_table import Converters

#: opset 25 is the first with INT2 tensors (ORT 1.32 casts them); INT4 needs 21.
OPSET = 25
#: offset between int8 codes and the uint8 that carries them in the graph.
CODE_OFFSET = 128

ONNX_TYPES = {
    torch.float32: TensorProto.FLOAT,
    torch.float64: TensorProto.DOUBLE,
    torch.int64: TensorProto.INT64,
    torch.int32: TensorProto.INT32,
    torch.int16: TensorProto.INT16,
    torch.int8: TensorProto.INT8,
    torch.uint8: TensorProto.UINT8,
    torch.bool: TensorProto.BOOL,
}
TORCH_TYPES = {torch.empty(0, dtype=t).numpy().dtype: t for t in ONNX_TYPES}
#: narrow integer initializers: (ONNX type, ml_dtypes type, lowest, highest), narrowest first.
_NARROW_INTS = ((TensorProto.INT2, ml_dtypes.int2, -2, 1), (TensorProto.INT4, ml_dtypes.int4, -8, 7))


class OnnxConversionError(MixQError, NotImplementedError):
    """An op of the program has no ONNX translation (or not with these arguments)."""


def unsupported(node: fx.Node, why: str = "") -> OnnxConversionError:
    name = getattr(node.target, "__name__", str(node.target))
    detail = f" ({why})" if why else ""
    return OnnxConversionError(
        f"the onnx backend cannot translate {name!r} at node {node.name!r}{detail}; add a converter to "
        "mixq_compile.runtimes.onnx.converters.CONVERTERS, or export with backend='torch'"
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


class OnnxGraph:
    """Builds one ONNX graph from one fx program: values, nodes, initializers, inputs and outputs."""

    def __init__(self, module: fx.GraphModule, prefix: str, converters: Converters) -> None:
        self.module = module
        self.prefix = prefix
        self.converters = converters
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

    def keep_initializers(self, names: set[str]) -> None:
        """Drop every initializer not in ``names`` (and forget it as a shared small constant)."""
        self.initializers = {name: t for name, t in self.initializers.items() if name in names}
        self._small = {key: name for key, name in self._small.items() if name in self.initializers}

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
        return replace(self.emit("Cast", [value.name], dtype, to=ONNX_TYPES[dtype]), symbolic=value.symbolic)

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
            self.inputs.append(value_info(node.name, example.dtype, example.shape))
            value = Value(node.name, example.dtype)
            self.env[node] = self.as_offset(value) if _holds_codes(node) else value
        for node in self.module.graph.nodes:
            if node.op == "get_attr":
                self.env[node] = self.get_attr(node)
            elif node.op in ("call_function", "call_module"):
                converter = self.converters.lookup(self.module, node)
                if converter is None:
                    module = self.module.get_submodule(node.target) if node.op == "call_module" else None
                    raise unsupported(node, f"module {type(module).__name__}" if module is not None else "")
                self.env[node] = converter(self, node)
                if node.op == "call_function" and _mutates_first_arg(node):  # later readers see the result
                    self.env[node.args[0]] = self.env[node]
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

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            self.prefix.strip("_") or "graph",
            self.inputs,
            [value_info(v.name, v.dtype, None) for v in self.outputs],
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


def value_info(name: str, dtype: torch.dtype, shape) -> onnx.ValueInfoProto:
    """Graph input/output type: every dim symbolic except size-1 dims (broadcast columns such as ``[E, 1]`` edge
    weights); no shape at all when ``shape`` is None (outputs, typed after an example run in :func:`_finish`)."""
    if shape is None:
        return helper.make_tensor_value_info(name, ONNX_TYPES[dtype], None)
    dims = [1 if size == 1 else f"{name}_{i}" for i, size in enumerate(shape)]
    return helper.make_tensor_value_info(name, ONNX_TYPES[dtype], dims)


def result_dtype(g: OnnxGraph, node: fx.Node, operands: Sequence) -> torch.dtype:
    """The dtype of ``node``'s result: recorded at capture, else PyTorch's promotion of its operands (a Python
    float next to integers gives float32)."""
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

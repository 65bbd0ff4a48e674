"""Converters of the ``onnx`` backend for activations, normalizations and arg-reductions that PyG models end with or
put between layers (ELU in GAT, ``log_softmax`` heads, GELU/SiLU MLPs, LayerNorm, ``F.normalize``); they run in
float on dequantized values. Merged into :data:`mixq_compile.runtimes.onnx.converters.CONVERTERS`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx

from ..fx_args import arg
from .graph import OnnxGraph, Value, unsupported

aten = torch.ops.aten


def unary(op_type: str, *, float_only: bool = False, **attrs) -> Callable[[OnnxGraph, fx.Node], Value]:
    """An elementwise ONNX op; ``float_only``: PyTorch computes it of an integer tensor in float32 (``sqrt``,
    ``exp``, ...)."""

    def convert(g: OnnxGraph, node: fx.Node) -> Value:
        x = g.plain(g.value(node.args[0]))
        if float_only and not x.dtype.is_floating_point:
            x = g.cast(x, torch.float32)
        return g.emit(op_type, [x.name], x.dtype, **attrs)

    convert.__doc__ = f"Elementwise {op_type}."
    return convert


def _float(g: OnnxGraph, node: fx.Node) -> Value:
    return g.cast(g.value(node.args[0]), torch.float32)


def _elu(g: OnnxGraph, node: fx.Node) -> Value:
    if arg(node, 2, "scale", 1) != 1 or arg(node, 3, "input_scale", 1) != 1:
        raise unsupported(node, "elu with scale or input_scale other than 1")
    return g.emit("Elu", [_float(g, node).name], torch.float32, alpha=float(arg(node, 1, "alpha", 1.0)))


def _gelu(g: OnnxGraph, node: fx.Node) -> Value:
    approximate = node.kwargs.get("approximate", "none")
    return g.emit("Gelu", [_float(g, node).name], torch.float32, approximate=approximate)


def _silu(g: OnnxGraph, node: fx.Node) -> Value:
    x = _float(g, node)
    return g.emit("Mul", [x.name, g.emit("Sigmoid", [x.name], torch.float32).name], torch.float32)


def _softplus(g: OnnxGraph, node: fx.Node) -> Value:
    """``log(1 + exp(x))``, and ``x`` itself above the threshold, as PyTorch computes it (β = 1 only)."""
    if arg(node, 1, "beta", 1) != 1:
        raise unsupported(node, "softplus with beta other than 1")
    x = _float(g, node)
    soft = g.emit("Softplus", [x.name], torch.float32)
    above = g.emit("Greater", [x.name, g.const(float(arg(node, 2, "threshold", 20)), torch.float32)], torch.bool)
    return g.emit("Where", [above.name, x.name, soft.name], torch.float32)


def _clip(low: float | None, high: float | None) -> Callable[[OnnxGraph, fx.Node], Value]:
    """``relu6`` (fixed bounds) and ``hardtanh(x, min_val, max_val)`` as ``Clip``."""

    def convert(g: OnnxGraph, node: fx.Node) -> Value:
        x = _float(g, node)
        lo = float(arg(node, 1, "min_val", -1.0)) if low is None else low
        hi = float(arg(node, 2, "max_val", 1.0)) if high is None else high
        return g.emit("Clip", [x.name, g.const(lo, torch.float32), g.const(hi, torch.float32)], torch.float32)

    return convert


def _clamp_side(op_type: str) -> Callable[[OnnxGraph, fx.Node], Value]:
    """``clamp_min`` / ``clamp_max`` (``F.normalize``'s ``norm.clamp_min(eps)``) as ``Max`` / ``Min``."""

    def convert(g: OnnxGraph, node: fx.Node) -> Value:
        x = g.plain(g.value(node.args[0]))
        bound = g.cast(g.value(node.args[1], x), x.dtype)
        return g.emit(op_type, [x.name, bound.name], x.dtype)

    return convert


def inverse_sqrt(g: OnnxGraph, x: Value) -> Value:
    """``1 / sqrt(x)``, the way PyTorch computes ``rsqrt`` and ``x ** -0.5`` (gcn_norm degrees, bit for bit)."""
    root = g.emit("Sqrt", [x.name], x.dtype)
    return g.emit("Div", [g.const(1, x.dtype), root.name], x.dtype)


def _rsqrt(g: OnnxGraph, node: fx.Node) -> Value:
    return inverse_sqrt(g, _float(g, node))


def _log_softmax(g: OnnxGraph, node: fx.Node) -> Value:
    return g.emit("LogSoftmax", [_float(g, node).name], torch.float32, axis=node.args[1])


def _layer_norm(g: OnnxGraph, node: fx.Node) -> Value:
    """``layer_norm(x, normalized_shape, weight, bias, eps)`` over the trailing ``len(normalized_shape)`` dims."""
    x, shape = _float(g, node), node.args[1]
    weight, bias = arg(node, 2, "weight"), arg(node, 3, "bias")
    scale = g.value(weight) if weight is not None else None
    if scale is None:  # ONNX needs a scale: ones over the normalized dims
        scale = g.emit("Expand", [g.const(1.0, torch.float32), g.ints(list(shape)).name], torch.float32)
    inputs = [x.name, scale.name] + ([g.value(bias).name] if bias is not None else [])
    eps = float(arg(node, 4, "eps", 1e-5))
    return g.emit("LayerNormalization", inputs, torch.float32, axis=-len(shape), epsilon=eps)


def _vector_norm(g: OnnxGraph, node: fx.Node) -> Value:
    """``linalg.vector_norm(x, 2, dim, keepdim)`` (``F.normalize``'s norm) as ``ReduceL2``."""
    if float(arg(node, 1, "ord", 2)) != 2.0 or node.kwargs.get("dtype") is not None:
        raise unsupported(node, "a vector norm other than the 2-norm")
    x, dims = _float(g, node), arg(node, 2, "dim")
    keepdims = int(bool(arg(node, 3, "keepdim", False)))
    inputs = [x.name] if not dims else [x.name, g.const(list(dims), torch.int64)]
    return g.emit("ReduceL2", inputs, torch.float32, keepdims=keepdims)


def _argmax(g: OnnxGraph, node: fx.Node) -> Value:
    x, dim = g.plain(g.value(node.args[0])), arg(node, 1, "dim")
    keepdims = int(bool(arg(node, 2, "keepdim", False)))
    if dim is None:  # over the flattened tensor
        x, dim = g.emit("Reshape", [x.name, g.const([-1], torch.int64)], x.dtype), 0
    return g.emit("ArgMax", [x.name], torch.int64, axis=dim, keepdims=keepdims, select_last_index=0)


def _max_dim(g: OnnxGraph, node: fx.Node) -> list[Value]:
    """``max(x, dim, keepdim)``: (values, indices), read with ``getitem``."""
    x, dim = g.plain(g.value(node.args[0])), node.args[1]
    keepdims = int(bool(arg(node, 2, "keepdim", False)))
    values = g.emit("ReduceMax", [x.name, g.const([dim], torch.int64)], x.dtype, keepdims=keepdims)
    indices = g.emit("ArgMax", [x.name], torch.int64, axis=dim, keepdims=keepdims, select_last_index=0)
    return [values, indices]


#: fx call target -> converter, for the ops of this module.
ACTIVATION_CONVERTERS: dict[object, Callable[[OnnxGraph, fx.Node], Value]] = {
    aten.elu.default: _elu,
    aten.gelu.default: _gelu,
    aten.silu.default: _silu,
    aten.softplus.default: _softplus,
    aten.selu.default: unary("Selu", float_only=True),
    aten.erf.default: unary("Erf", float_only=True),
    aten.relu6.default: _clip(0.0, 6.0),
    aten.hardtanh.default: _clip(None, None),
    aten.clamp_min.default: _clamp_side("Max"),
    aten.clamp_max.default: _clamp_side("Min"),
    aten.rsqrt.default: _rsqrt,
    aten.log_softmax.int: _log_softmax,
    aten._log_softmax.default: _log_softmax,
    aten.layer_norm.default: _layer_norm,
    aten.linalg_vector_norm.default: _vector_norm,
    aten.argmax.default: _argmax,
    aten.max.dim: _max_dim,
}

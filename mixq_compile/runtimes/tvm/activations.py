"""Converters of the TVM backend for activations, normalizations and arg-reductions that PyG models end with or put
between layers (ELU in GAT, ``log_softmax`` heads, GELU/SiLU MLPs, LayerNorm, ``F.normalize``); they run in float
on dequantized values. Merged into :data:`mixq_compile.runtimes.tvm.converters.CONVERTERS`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx
from tvm import relax

from ..fx_args import arg
from .tensor_ops import unary
from .translator import Converter, ConverterMap, dtype_of, normal_axis, shape_of, unsupported

aten = torch.ops.aten


def _float(c: Converter, node: fx.Node) -> relax.Expr:
    return c.tensor(node.args[0], "float32")


def _elu(c: Converter, node: fx.Node) -> relax.Expr:
    if arg(node, 2, "scale", 1) != 1 or arg(node, 3, "input_scale", 1) != 1:
        raise unsupported(node, "elu with scale or input_scale other than 1")
    x, alpha = _float(c, node), float(arg(node, 1, "alpha", 1.0))
    negative = c.emit(relax.op.multiply(relax.const(alpha, "float32"), c.emit(relax.op.subtract(
        c.emit(relax.op.exp(x)), relax.const(1.0, "float32")))))  # fmt: skip
    return c.emit(relax.op.where(c.emit(relax.op.greater(x, relax.const(0.0, "float32"))), x, negative))


def _gelu(c: Converter, node: fx.Node) -> relax.Expr:
    tanh = node.kwargs.get("approximate", "none") == "tanh"
    return c.emit((relax.op.nn.gelu_tanh if tanh else relax.op.nn.gelu)(_float(c, node)))


def _softplus(c: Converter, node: fx.Node) -> relax.Expr:
    beta, threshold = float(arg(node, 1, "beta", 1)), float(arg(node, 2, "threshold", 20))
    return c.emit(relax.op.nn.softplus(_float(c, node), beta, threshold))


def _clip(low: float | None, high: float | None) -> Callable[[Converter, fx.Node], relax.Expr]:
    """``relu6`` (fixed bounds) and ``hardtanh(x, min_val, max_val)``."""

    def convert(c: Converter, node: fx.Node) -> relax.Expr:
        lo = float(arg(node, 1, "min_val", -1.0)) if low is None else low
        hi = float(arg(node, 2, "max_val", 1.0)) if high is None else high
        return c.emit(relax.op.clip(_float(c, node), lo, hi))

    return convert


def _clamp_side(op: Callable) -> Callable[[Converter, fx.Node], relax.Expr]:
    """``clamp_min`` / ``clamp_max`` (``F.normalize``'s ``norm.clamp_min(eps)``)."""

    def convert(c: Converter, node: fx.Node) -> relax.Expr:
        x = c.tensor(node.args[0])
        return c.emit(op(x, c.tensor(node.args[1], dtype_of(x))))

    return convert


def _log_softmax(c: Converter, node: fx.Node) -> relax.Expr:
    return c.emit(relax.op.nn.log_softmax(_float(c, node), node.args[1]))


def _layer_norm(c: Converter, node: fx.Node) -> relax.Expr:
    """``layer_norm(x, normalized_shape, weight, bias, eps)`` over the trailing ``len(normalized_shape)`` dims."""
    x, shape = _float(c, node), list(node.args[1])
    weight, bias = arg(node, 2, "weight"), arg(node, 3, "bias")
    gamma = c.tensor(weight, "float32") if weight is not None else relax.op.ones(shape, "float32")
    beta = c.tensor(bias, "float32") if bias is not None else relax.op.zeros(shape, "float32")
    rank = len(shape_of(x))
    axes = list(range(rank - len(shape), rank))
    return c.emit(relax.op.nn.layer_norm(x, c.emit(gamma), c.emit(beta), axes, float(arg(node, 4, "eps", 1e-5))))


def _vector_norm(c: Converter, node: fx.Node) -> relax.Expr:
    """``linalg.vector_norm(x, 2, dim, keepdim)`` (``F.normalize``'s norm)."""
    if float(arg(node, 1, "ord", 2)) != 2.0 or node.kwargs.get("dtype") is not None:
        raise unsupported(node, "a vector norm other than the 2-norm")
    x, dims = _float(c, node), arg(node, 2, "dim")
    axes = [normal_axis(d, len(shape_of(x))) for d in dims] if dims else None
    squares = c.emit(relax.op.sum(c.emit(relax.op.multiply(x, x)), axes, bool(arg(node, 3, "keepdim", False))))
    return c.emit(relax.op.sqrt(squares))


def _argmax(c: Converter, node: fx.Node) -> relax.Expr:
    x, dim = c.tensor(node.args[0]), arg(node, 1, "dim")
    keepdim = bool(arg(node, 2, "keepdim", False))
    if dim is None:  # over the flattened tensor
        return c.emit(relax.op.argmax(c.emit(relax.op.reshape(x, [-1])), 0, keepdim))
    return c.emit(relax.op.argmax(x, normal_axis(dim, len(shape_of(x))), keepdim))


def _max_dim(c: Converter, node: fx.Node) -> relax.Expr:
    """``max(x, dim, keepdim)``: (values, indices), read with ``getitem``."""
    x = c.tensor(node.args[0])
    dim, keepdim = normal_axis(node.args[1], len(shape_of(x))), bool(arg(node, 2, "keepdim", False))
    values = c.emit(relax.op.max(x, [dim], keepdim))
    return c.emit(relax.Tuple([values, c.emit(relax.op.argmax(x, dim, keepdim))]))


_CLIPS_AND_UNARY = {
    aten.silu.default: unary(relax.op.nn.silu, float_only=True),
    aten.selu.default: unary(relax.op.nn.selu, float_only=True),
    aten.erf.default: unary(relax.op.erf, float_only=True),
    aten.rsqrt.default: unary(relax.op.rsqrt, float_only=True),
    aten.relu6.default: _clip(0.0, 6.0),
    aten.hardtanh.default: _clip(None, None),
    aten.clamp_min.default: _clamp_side(relax.op.maximum),
    aten.clamp_max.default: _clamp_side(relax.op.minimum),
}


ACTIVATION_CONVERTERS: ConverterMap = {
    aten.elu.default: _elu,
    aten.gelu.default: _gelu,
    aten.softplus.default: _softplus,
    aten.log_softmax.int: _log_softmax,
    aten._log_softmax.default: _log_softmax,
    aten.layer_norm.default: _layer_norm,
    aten.linalg_vector_norm.default: _vector_norm,
    aten.argmax.default: _argmax,
    aten.max.dim: _max_dim,
    **_CLIPS_AND_UNARY,
}

"""Converters of the TVM backend for activations, normalizations and arg-reductions that PyG models end with or put
between layers (ELU in GAT, ``log_softmax`` heads, GELU/SiLU MLPs, LayerNorm, ``F.normalize``); they run in float
on dequantized values. Imported by :mod:`mixq_compile.runtimes.tvm_convert`, whose registry they join."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx
from tvm import relax

from .fx_args import arg
from .tvm_convert import Converter, _axis, _converts, _dtype, _shape, _unsupported
from .tvm_tensor_ops import _unary

aten = torch.ops.aten


def _float(c: Converter, node: fx.Node) -> relax.Expr:
    return c.tensor(node.args[0], "float32")


@_converts(aten.elu.default)
def _elu(c: Converter, node: fx.Node) -> relax.Expr:
    if arg(node, 2, "scale", 1) != 1 or arg(node, 3, "input_scale", 1) != 1:
        raise _unsupported(node, "elu with scale or input_scale other than 1")
    x, alpha = _float(c, node), float(arg(node, 1, "alpha", 1.0))
    negative = c.emit(relax.op.multiply(relax.const(alpha, "float32"), c.emit(relax.op.subtract(
        c.emit(relax.op.exp(x)), relax.const(1.0, "float32")))))  # fmt: skip
    return c.emit(relax.op.where(c.emit(relax.op.greater(x, relax.const(0.0, "float32"))), x, negative))


@_converts(aten.gelu.default)
def _gelu(c: Converter, node: fx.Node) -> relax.Expr:
    tanh = node.kwargs.get("approximate", "none") == "tanh"
    return c.emit((relax.op.nn.gelu_tanh if tanh else relax.op.nn.gelu)(_float(c, node)))


@_converts(aten.softplus.default)
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
        return c.emit(op(x, c.tensor(node.args[1], _dtype(x))))

    return convert


@_converts(aten.log_softmax.int, aten._log_softmax.default)
def _log_softmax(c: Converter, node: fx.Node) -> relax.Expr:
    return c.emit(relax.op.nn.log_softmax(_float(c, node), node.args[1]))


@_converts(aten.layer_norm.default)
def _layer_norm(c: Converter, node: fx.Node) -> relax.Expr:
    """``layer_norm(x, normalized_shape, weight, bias, eps)`` over the trailing ``len(normalized_shape)`` dims."""
    x, shape = _float(c, node), list(node.args[1])
    weight, bias = arg(node, 2, "weight"), arg(node, 3, "bias")
    gamma = c.tensor(weight, "float32") if weight is not None else relax.op.ones(shape, "float32")
    beta = c.tensor(bias, "float32") if bias is not None else relax.op.zeros(shape, "float32")
    rank = len(_shape(x))
    axes = list(range(rank - len(shape), rank))
    return c.emit(relax.op.nn.layer_norm(x, c.emit(gamma), c.emit(beta), axes, float(arg(node, 4, "eps", 1e-5))))


@_converts(aten.linalg_vector_norm.default)
def _vector_norm(c: Converter, node: fx.Node) -> relax.Expr:
    """``linalg.vector_norm(x, 2, dim, keepdim)`` (``F.normalize``'s norm)."""
    if float(arg(node, 1, "ord", 2)) != 2.0 or node.kwargs.get("dtype") is not None:
        raise _unsupported(node, "a vector norm other than the 2-norm")
    x, dims = _float(c, node), arg(node, 2, "dim")
    axes = [_axis(d, len(_shape(x))) for d in dims] if dims else None
    squares = c.emit(relax.op.sum(c.emit(relax.op.multiply(x, x)), axes, bool(arg(node, 3, "keepdim", False))))
    return c.emit(relax.op.sqrt(squares))


@_converts(aten.argmax.default)
def _argmax(c: Converter, node: fx.Node) -> relax.Expr:
    x, dim = c.tensor(node.args[0]), arg(node, 1, "dim")
    keepdim = bool(arg(node, 2, "keepdim", False))
    if dim is None:  # over the flattened tensor
        return c.emit(relax.op.argmax(c.emit(relax.op.reshape(x, [-1])), 0, keepdim))
    return c.emit(relax.op.argmax(x, _axis(dim, len(_shape(x))), keepdim))


@_converts(aten.max.dim)
def _max_dim(c: Converter, node: fx.Node) -> relax.Expr:
    """``max(x, dim, keepdim)``: (values, indices), read with ``getitem``."""
    x = c.tensor(node.args[0])
    dim, keepdim = _axis(node.args[1], len(_shape(x))), bool(arg(node, 2, "keepdim", False))
    values = c.emit(relax.op.max(x, [dim], keepdim))
    return c.emit(relax.Tuple([values, c.emit(relax.op.argmax(x, dim, keepdim))]))


for _target, _convert in {
    aten.silu.default: _unary(relax.op.nn.silu, float_only=True),
    aten.selu.default: _unary(relax.op.nn.selu, float_only=True),
    aten.erf.default: _unary(relax.op.erf, float_only=True),
    aten.rsqrt.default: _unary(relax.op.rsqrt, float_only=True),
    aten.relu6.default: _clip(0.0, 6.0),
    aten.hardtanh.default: _clip(None, None),
    aten.clamp_min.default: _clamp_side(relax.op.maximum),
    aten.clamp_max.default: _clamp_side(relax.op.minimum),
}.items():
    _converts(_target)(_convert)

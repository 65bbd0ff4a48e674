"""Differentiable fake quantization with straight-through estimators (LSQ+).

The whole gradient follows from writing the quantizer with two STE primitives and letting autograd do the rest:
``x_hat = s * (clamp(round_ste(x / s + z), qmin, qmax) - z)``. Inside the range this gives
``d x_hat / dx = 1``, ``d x_hat / ds = round(u) - u`` (the rounding error, as in LSQ) and ``d x_hat / dz = 0``;
outside it gives ``0``, ``qmin|qmax - z`` and ``-s``. :func:`grad_scale` applies LSQ's gradient scaling
``1 / sqrt(numel * qmax)`` to the scale so that its step size matches the weights'. This replaces the reference
code's heuristic scale/zero-point gradients (MIXQ_METHOD.md §1.2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def round_ste(x: Tensor) -> Tensor:
    """Round to nearest with an identity gradient."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: Tensor, factor: float) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``factor`` in the backward pass."""
    scaled = x * factor
    return (x - scaled).detach() + scaled


def lsq_grad_factor(numel_per_scale: int, qmax: int) -> float:
    """LSQ's scale-gradient factor ``1 / sqrt(N * Q_P)``."""
    return 1.0 / math.sqrt(max(numel_per_scale, 1) * max(qmax, 1))


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Quantize-dequantize ``x``; ``scale`` and ``zero_point`` broadcast against ``x``.

    ``zero_point`` is used as given: callers round it (with :func:`round_ste`) so that it is an integer.
    """
    codes = torch.clamp(round_ste(x / scale + zero_point), qmin, qmax)
    return (codes - zero_point) * scale


def quantize_codes(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Integer codes of ``x`` (as a float tensor holding integral values), no gradient."""
    with torch.no_grad():
        return torch.clamp(torch.round(x / scale + zero_point), qmin, qmax)


class _LSQFakeQuantize(torch.autograd.Function):
    """Fused forward/backward of :func:`fake_quantize` with gradient scaling: the same values and gradients as the
    composite STE formulation, in a handful of kernels (the search runs K of these per site and step)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, grad_factor):
        z = torch.clamp(torch.round(zero_point), qmin, qmax)
        codes = torch.clamp(torch.round(x / scale + z), qmin, qmax)
        ctx.save_for_backward(x, scale, z)
        ctx.bounds = (qmin, qmax, grad_factor)
        return (codes - z) * scale

    @staticmethod
    def backward(ctx, grad):
        x, scale, z = ctx.saved_tensors
        qmin, qmax, grad_factor = ctx.bounds
        u = x / scale + z
        rounded = torch.round(u)
        below, above = rounded < qmin, rounded > qmax
        outside = below | above
        grad_x = torch.where(outside, 0.0, grad) if ctx.needs_input_grad[0] else None
        grad_scale = grad_zero = None
        if ctx.needs_input_grad[1]:
            d_scale = torch.where(below, qmin - z, torch.where(above, qmax - z, rounded - u))
            grad_scale = (grad * d_scale).sum_to_size(scale.shape) * grad_factor
        if ctx.needs_input_grad[2]:
            grad_zero = (torch.where(outside, grad, 0.0) * -scale).sum_to_size(scale.shape)
        return grad_x, grad_scale, grad_zero, None, None, None


def lsq_fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, grad_factor: float) -> Tensor:
    """Fake-quantize ``x`` with LSQ+ gradients for ``scale`` (scaled by ``grad_factor``) and ``zero_point``.

    ``scale`` must be positive and broadcastable against ``x``; ``zero_point`` (same shape) is rounded and clamped
    to the code range in the forward pass with a straight-through gradient. Equivalent to
    ``fake_quantize(x, grad_scale(scale, f), round_ste(clamp(zero_point)), qmin, qmax)``.
    """
    return _LSQFakeQuantize.apply(x, scale, zero_point, qmin, qmax, grad_factor)


def bias_fake_quantize(bias: Tensor, x_scale: Tensor, w_scale: Tensor) -> Tensor:
    """Fake-quantize a linear bias onto the accumulator grid ``s_x * s_w`` (per output channel), as int32 bias.

    Integer inference adds the bias to the int32 accumulator, so the bias must lie on that grid; modelling it in
    QAT keeps the fake-quant model and the integer program equal. Straight-through gradient for the bias.
    """
    step = x_scale.abs().clamp_min(1e-8).reshape(()) * w_scale.abs().clamp_min(1e-8).reshape(-1)
    return round_ste(bias / step) * step

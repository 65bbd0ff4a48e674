"""Differentiable fake quantization with straight-through estimators (LSQ+).

The whole gradient follows from writing the quantizer with two STE primitives and letting autograd do the rest:
``x_hat = s * (clamp(round_ste(x / s) + z, qmin, qmax) - z)`` (the zero-point added after rounding, as in
PyTorch's and ONNX's quantize). With ``u = x / s``, inside the range this gives ``d x_hat / dx = 1``,
``d x_hat / ds = round(u) - u`` (the rounding error, as in LSQ) and ``d x_hat / dz = 0``;
outside it gives ``0``, ``qmin|qmax - z`` and ``-s``. :func:`grad_scale` applies LSQ's gradient scaling
``1 / sqrt(numel * qmax)`` to the scale so that its step size matches the weights'. This replaces the reference
code's heuristic scale/zero-point gradients (MIXQ_METHOD.md §1.2).

That composite form (:func:`fake_quantize` with :func:`grad_scale` and :func:`round_ste`) is the definition; the
modules run :func:`mixed_lsq_fake_quantize`, a hand-written autograd function with the same values and gradients
that mixes all K candidates of a site in one pass (tests compare the two).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    codes = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (codes - zero_point) * scale


def quantize_codes(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Integer codes of ``x`` (as a float tensor holding integral values), no gradient."""
    with torch.no_grad():
        return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


def _reduce_product(a: Tensor, b: Tensor, shape: torch.Size) -> Tensor:
    """``(a * b).sum_to_size(shape)``; one pass without a temporary when ``shape`` holds a single value."""
    if math.prod(shape) == 1:
        return torch.dot(a.reshape(-1), b.reshape(-1)).reshape(shape)
    return (a * b).sum_to_size(shape)


class _MixedLSQFakeQuantize(torch.autograd.Function):
    """``sum_k p_k * FQ_k(x)`` over K fake quantizers in one autograd node, with LSQ+ gradients.

    Forward and backward are written by hand so that each candidate costs a few passes over ``x`` and no autograd
    graph of temporaries (the search runs this at every site on every step). With ``u = x / s`` and the code
    ``c = clamp(round(u) + z, qmin, qmax)``, the forward saves per candidate ``c - z``, the clamping mask ``o`` (1
    where the code was clamped, as a float so that every backward reduction is a dot product) and the per-element
    scale derivative ``d`` (``round(u) - u`` inside the range, ``c - z`` where clamped). The backward then only
    reduces products with the incoming gradient ``g``:

    - ``dL/dx = g * sum_k p_k * (1 - o_k)`` (straight-through inside each candidate's range);
    - ``dL/ds_k = p_k * f_k * sum(g * d_k)`` (LSQ, with LSQ's gradient factor ``f_k``);
    - ``dL/dz_k = -p_k * s_k * sum(g * o_k)`` (straight through the zero-point's rounding and clamping);
    - ``dL/dp_k = s_k * sum(g * (c_k - z_k))`` (the candidate's output; softmax backward is left to autograd).

    Sums reduce to each parameter's (broadcast) shape, so per-tensor and per-channel quantizers share the code.
    Ops are chosen for CPU speed: ``where`` on a bool mask and ``addcdiv`` with 0-dim operands are several times
    slower than the float-mask ``lerp`` and ``div`` + ``add_`` used here, which compute the same values. Without
    gradients (evaluation) only the output is computed, and a zero zero-point skips its add and subtract.
    """

    @staticmethod
    def forward(ctx, x, probs, ranges, grad_factors, for_backward, *scales_and_zero_points):
        count = len(ranges)
        scales, raw_zero_points = scales_and_zero_points[:count], scales_and_zero_points[count:]
        out = None
        saved = []
        for k, (qmin, qmax) in enumerate(ranges):
            scale = scales[k]
            z = torch.clamp(torch.round(raw_zero_points[k]), qmin, qmax)
            z_is_zero = not bool(z.any())  # symmetric, or affine on non-negative data: skip two passes
            u = torch.div(x, scale)
            if for_backward:
                rounded = torch.round(u)
                d_scale = torch.sub(rounded, u, out=u)  # inside the range: the rounding error round(u) - u
                if not z_is_zero:
                    rounded.add_(z)
                codes = torch.clamp(rounded, qmin, qmax)
                clamped = torch.ne(rounded, codes, out=rounded)  # float 0/1, reusing the buffer
            else:
                codes = u.round_()
                if not z_is_zero:
                    codes.add_(z)
                codes.clamp_(qmin, qmax)
            if not z_is_zero:
                codes.sub_(z)  # c - z, exact on integers
            if for_backward:
                d_scale.lerp_(codes, clamped)  # exact select: c - z where clamped
                saved += [codes, d_scale, clamped, scale]
            weight = probs[k] * scale
            out = codes * weight if out is None else out.addcmul_(codes, weight)
        ctx.save_for_backward(probs, *saved)
        ctx.grad_factors = grad_factors
        return out

    @staticmethod
    def backward(ctx, grad):
        probs, *saved = ctx.saved_tensors
        count = len(ctx.grad_factors)
        needs = ctx.needs_input_grad
        keep = torch.full_like(grad, float(probs.sum())) if needs[0] else None
        grad_probs = torch.zeros_like(probs) if needs[1] else None
        grad_scales: list[Tensor | None] = [None] * count
        grad_zero_points: list[Tensor | None] = [None] * count
        for k in range(count):
            codes, d_scale, clamped, scale = saved[4 * k : 4 * k + 4]
            if grad_probs is not None:
                grad_probs[k] = (_reduce_product(grad, codes, scale.shape) * scale).sum()
            if needs[5 + k]:
                grad_scales[k] = _reduce_product(grad, d_scale, scale.shape) * (probs[k] * ctx.grad_factors[k])
            if needs[5 + count + k]:
                grad_zero_points[k] = _reduce_product(grad, clamped, scale.shape) * (-probs[k] * scale)
            if keep is not None:
                keep.addcmul_(clamped, -probs[k])
        grad_x = keep.mul_(grad) if keep is not None else None
        return grad_x, grad_probs, None, None, None, *grad_scales, *grad_zero_points


def mixed_lsq_fake_quantize(
    x: Tensor,
    probs: Tensor,
    scales: Sequence[Tensor],
    zero_points: Sequence[Tensor],
    ranges: Sequence[tuple[int, int]],
    grad_factors: Sequence[float],
) -> Tensor:
    """``sum_k probs[k] * FQ(x; scales[k], zero_points[k], ranges[k])`` with LSQ+ gradients, fused.

    Each ``scales[k]`` must be positive and broadcastable against ``x``; ``zero_points[k]`` (same shape) is rounded
    and clamped to its code range in the forward pass with a straight-through gradient; the scale gradient is
    multiplied by ``grad_factors[k]``. Equivalent to the composite
    ``sum_k probs[k] * fake_quantize(x, grad_scale(s_k, f_k), round_ste(clamp(z_k)), *ranges[k])``.
    """
    tensors = (x, probs, *scales, *zero_points)
    # Without gradients (evaluation) the forward computes the output only: three passes fewer per candidate.
    for_backward = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return _MixedLSQFakeQuantize.apply(
        x, probs, tuple(ranges), tuple(grad_factors), for_backward, *scales, *zero_points
    )


def lsq_fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, grad_factor: float) -> Tensor:
    """Fake-quantize ``x`` with LSQ+ gradients: the one-candidate case of :func:`mixed_lsq_fake_quantize`.

    Equivalent to ``fake_quantize(x, grad_scale(scale, f), round_ste(clamp(zero_point)), qmin, qmax)``.
    """
    one = torch.ones(1, dtype=x.dtype, device=x.device)
    return mixed_lsq_fake_quantize(x, one, (scale,), (zero_point,), ((qmin, qmax),), (grad_factor,))


def bias_fake_quantize(bias: Tensor, x_scale: Tensor, w_scale: Tensor) -> Tensor:
    """Fake-quantize a linear bias onto the accumulator grid ``s_x * s_w`` (per output channel), as int32 bias.

    Integer inference adds the bias to the int32 accumulator, so the bias must lie on that grid; modelling it in
    QAT keeps the fake-quant model and the integer program equal. Straight-through gradient for the bias.
    """
    step = x_scale.abs().clamp_min(1e-8).reshape(()) * w_scale.abs().clamp_min(1e-8).reshape(-1)
    return round_ste(bias / step) * step

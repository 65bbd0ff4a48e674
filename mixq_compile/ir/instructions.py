"""The integer program's instruction set: small functions with exact integer semantics.

The lowering pass (:mod:`mixq_compile.lowering.lower_integer`) emits ``call_function`` nodes whose targets are these
functions, so an integer program is an ordinary ``torch.fx`` graph over a fixed, documented vocabulary. Running
that graph *is* the PyTorch reference executor; every backend translates the same vocabulary (one converter per
function) and is checked against it.

Conventions:
- codes are ``int8`` (≤ 8 bits) or ``int16`` (≤ 16 bits) tensors; their grid is ``real = scale * (code - zero)``.
- accumulators are ``int32``; their value is ``real = scale * acc`` (zero-point 0).
- ``scale`` and ``zero`` are tensors broadcastable against the value (0-d per tensor, ``[C]`` over the last dim).
"""

from __future__ import annotations

import torch
from torch import Tensor


def container_dtype(qmin: int, qmax: int) -> torch.dtype:
    """Smallest signed integer dtype that holds ``[qmin, qmax]`` (after the unsigned shift, see ``grid_shift``)."""
    if -128 <= qmin and qmax <= 127:
        return torch.int8
    if -32768 <= qmin and qmax <= 32767:
        return torch.int16
    raise ValueError(f"code range [{qmin}, {qmax}] does not fit in int16")


def grid_shift(qmin: int, qmax: int) -> int:
    """Offset added to codes so an unsigned range fits a signed container (e.g. uint8 [0, 255] -> int8 [-128, 127]).

    Shifting codes and zero-point together leaves every real value unchanged: ``s*(q - z) = s*((q+k) - (z+k))``.
    """
    if qmax - qmin <= 255:
        return 0 if qmax <= 127 else -128 - qmin
    return 0 if qmax <= 32767 else -32768 - qmin


def quantize(x: Tensor, scale: Tensor, zero: Tensor, qmin: int, qmax: int) -> Tensor:
    """Float -> codes: ``clamp(round(x / scale) + zero, qmin, qmax)``, the fake quantizer's exact arithmetic.

    The zero-point is added after rounding, in integers (as PyTorch's quantized tensors, ONNX ``QuantizeLinear``
    and TFLite do): one float rounding fewer than ``round(x / scale + zero)``, and every backend reproduces it with
    its own quantize op (ONNX Runtime in one ``QuantizeLinear`` instead of a division, an add and a requantize)."""
    codes = torch.clamp(torch.round(x / scale) + zero, qmin, qmax)
    return codes.to(container_dtype(qmin, qmax))


def dequantize(q: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """Codes -> float: ``scale * (q - zero)``."""
    return (q.to(torch.int32) - zero.to(torch.int32)).to(torch.float32) * scale


def dequantize_acc(acc: Tensor, scale: Tensor) -> Tensor:
    """Accumulator -> float: ``scale * acc``."""
    return acc.to(torch.float32) * scale


def center(q: Tensor, zero: Tensor) -> Tensor:
    """Codes -> accumulator on the same scale: ``q - zero`` in int32 (exact)."""
    return q.to(torch.int32) - zero.to(torch.int32)


def requantize(acc: Tensor, multiplier: Tensor, zero: Tensor, qmin: int, qmax: int) -> Tensor:
    """Accumulator -> codes of the next grid: ``clamp(round(acc * M) + zero)`` with ``M = s_acc / s_out`` (float)."""
    codes = torch.clamp(torch.round(acc.to(torch.float32) * multiplier) + zero, qmin, qmax)
    return codes.to(container_dtype(qmin, qmax))


def requantize_fixed_point(acc: Tensor, mantissa: Tensor, shift: Tensor, zero: Tensor, qmin: int, qmax: int) -> Tensor:
    """As :func:`requantize` with ``M ≈ mantissa * 2**-shift`` in integer arithmetic (round half up), for
    targets without floating point. ``mantissa`` is an int64 tensor < 2**31, ``shift`` an int64 tensor."""
    product = acc.to(torch.int64) * mantissa
    rounded = (product + (torch.ones_like(shift) << (shift - 1))) >> shift
    return torch.clamp(rounded + zero.to(torch.int64), qmin, qmax).to(container_dtype(qmin, qmax))


def relu_codes(q: Tensor, zero: Tensor) -> Tensor:
    """ReLU on codes: clamp from below at the code of real zero."""
    return torch.maximum(q, zero.to(q.dtype))


def linear_int(q_x: Tensor, x_zero: Tensor, w_t: Tensor, w_sum: Tensor, bias: Tensor | None) -> Tensor:
    """``(q_x - z_x) @ W^T (+ bias)`` in int32, with ``w_t = W^T`` ([in, out]) and ``w_sum[o] = Σ_k W[o, k]``.

    The zero-point is folded out of the product (``q_x @ W^T - z_x * w_sum``) so that int8 codes feed the int8 x
    int8 -> int32 kernel (``torch._int_mm``, VNNI on x86) directly. Wider codes use an int32 matmul.
    """
    lead = q_x.shape[:-1]
    flat = q_x.reshape(-1, q_x.shape[-1])
    if flat.dtype == torch.int8 and w_t.dtype == torch.int8:
        acc = torch._int_mm(flat, w_t)
    else:
        acc = flat.to(torch.int32) @ w_t.to(torch.int32)
    # in place: acc is this function's own new tensor, and a second [rows, out] int32 temporary costs a page fault
    # every 4 KiB on a big graph (measured: 1M x 256, 341 ms of a 1.2 s layer)
    acc.sub_(x_zero.to(torch.int32) * w_sum)
    if bias is not None:
        acc.add_(bias)
    return acc.reshape(*lead, w_t.shape[1])


def mul_int(a: Tensor, b: Tensor) -> Tensor:
    """Product of two accumulators (e.g. centered edge-weight codes times centered messages), int32."""
    return a.to(torch.int32) * b.to(torch.int32)


def add_int(a: Tensor, b: Tensor) -> Tensor:
    """Sum of two accumulators on the same scale, int32."""
    return a.to(torch.int32) + b.to(torch.int32)


def scatter_sum_int(acc: Tensor, dim: int, index: Tensor, size: list) -> Tensor:
    """Sum aggregation of int32 messages into a zero tensor of shape ``size`` (exact integer scatter-add)."""
    out = torch.zeros(size, dtype=torch.int32, device=acc.device)
    return out.scatter_add(dim, index, acc.to(torch.int32))


def index_sum_int(acc: Tensor, dim: int, index: Tensor, size: list) -> Tensor:
    """Sum aggregation via ``index_add`` (rows of ``acc`` added into ``index`` rows), int32."""
    out = torch.zeros(size, dtype=torch.int32, device=acc.device)
    return out.index_add(dim, index, acc.to(torch.int32))


def scatter_select_int(acc: Tensor, dim: int, index: Tensor, size: list, reduce: str) -> Tensor:
    """Max/min aggregation on int32 values (order-preserving, so exact); empty rows stay 0 (= real zero)."""
    out = torch.zeros(size, dtype=torch.int32, device=acc.device)
    return out.scatter_reduce(dim, index, acc.to(torch.int32), reduce, include_self=False)


#: Every instruction, by name: the vocabulary that backends translate.
INSTRUCTIONS = {
    f.__name__: f
    for f in (
        quantize,
        dequantize,
        dequantize_acc,
        center,
        requantize,
        requantize_fixed_point,
        relu_codes,
        linear_int,
        mul_int,
        add_int,
        scatter_sum_int,
        index_sum_int,
        scatter_select_int,
    )
}

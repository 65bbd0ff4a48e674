"""``mixq::quantize`` and ``mixq::requantize``: the element-wise instructions as single-pass ops.

Run op by op (a ``.pt2`` program without AOTInductor), ``clamp(round(x / scale) + zero)`` makes four passes over
the input, each writing a fresh float tensor the size of the input: for Cora's 2708 × 1433 node features that is
four 15 MB allocations and ~6 ms, more than the whole integer GEMM; each requantize between layers is five ATen ops
(to float, multiply, round, add, clamp, to codes) of ~20 µs dispatch each. These ops apply the same element-wise
steps in the same order (so the codes are bit-identical): with the native kernels (:mod:`.native`) in one C pass;
without them, ``quantize`` in cache-sized row blocks in one small buffer, ``requantize`` as the instruction itself.
AOTInductor fuses the chains about as well by itself, so only the plain ``.pt2`` program uses these ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ir import instructions as K
from ..ir.instructions import container_dtype
from . import native
from .op_registry import operator

_BLOCK_ELEMENTS = 1 << 18  # 1 MiB of float32 per block: in L2, and few enough blocks that dispatch stays cheap


@operator("quantize")
def quantize(x: Tensor, scale: Tensor, zero: Tensor, qmin: int, qmax: int) -> Tensor:
    """Float -> codes, exactly as ``kernels.quantize`` (``scale``/``zero`` 0-d or broadcast over the last dim)."""
    code = container_dtype(qmin, qmax)
    if native.supports_quantize(x, scale, zero, code):
        return native.quantize(x, scale, zero, qmin, qmax, code)
    out = torch.empty(x.shape, dtype=code, device=x.device)
    if x.numel() == 0:
        return out
    rows = x.reshape(-1, x.shape[-1]) if x.dim() > 0 else x.reshape(1, 1)
    codes = out.view(rows.shape)
    step = max(1, _BLOCK_ELEMENTS // max(rows.shape[1], 1))
    buffer = torch.empty((step, rows.shape[1]), dtype=torch.float32, device=x.device)
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step]
        work = buffer[: block.shape[0]]
        torch.div(block, scale, out=work)
        work.round_().add_(zero).clamp_(qmin, qmax)
        codes[start : start + step].copy_(work)
    return out


@operator("requantize")
def requantize(acc: Tensor, multiplier: Tensor, zero: Tensor, qmin: int, qmax: int) -> Tensor:
    """Accumulator -> codes, exactly as ``kernels.requantize``."""
    code = container_dtype(qmin, qmax)
    if native.supports_requantize(acc, multiplier, zero, code):
        return native.requantize(acc, multiplier, zero, qmin, qmax, code)
    return K.requantize(acc, multiplier, zero, qmin, qmax)


@quantize.register_fake
def _(x: Tensor, scale: Tensor, zero: Tensor, qmin: int, qmax: int) -> Tensor:
    return torch.empty(x.shape, dtype=container_dtype(qmin, qmax), device=x.device)


@requantize.register_fake
def _(acc: Tensor, multiplier: Tensor, zero: Tensor, qmin: int, qmax: int) -> Tensor:
    return torch.empty(acc.shape, dtype=container_dtype(qmin, qmax), device=acc.device)

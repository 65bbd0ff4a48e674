"""``mixq::quantize``: :func:`mixq_compile.integer.kernels.quantize` computed in cache-sized row blocks.

Run op by op (a ``.pt2`` program without AOTInductor), ``clamp(round(x / scale + zero))`` makes four passes over
the input, each writing a fresh float tensor the size of the input: for Cora's 2708 × 1433 node features that is
four 15 MB allocations and ~6 ms, more than the whole integer GEMM. This op applies the same element-wise steps, in
the same order (so the codes are bit-identical), to blocks of rows that stay in cache, in place in one small
buffer, and writes the int8/int16 codes directly; with the native kernels (:mod:`.native`) it is one C pass.
AOTInductor fuses the chain about as well by itself, so only the plain ``.pt2`` program uses this op.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import native
from .kernels import container_dtype

_BLOCK_ELEMENTS = 1 << 18  # 1 MiB of float32 per block: in L2, and few enough blocks that dispatch stays cheap


@torch.library.custom_op("mixq::quantize", mutates_args=())
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
        torch.addcdiv(zero, block, scale, out=work)  # zero + x / scale: the same two roundings as x / scale + zero
        work.round_().clamp_(qmin, qmax)
        codes[start : start + step].copy_(work)
    return out


@quantize.register_fake
def _(x: Tensor, scale: Tensor, zero: Tensor, qmin: int, qmax: int) -> Tensor:
    return torch.empty(x.shape, dtype=container_dtype(qmin, qmax), device=x.device)

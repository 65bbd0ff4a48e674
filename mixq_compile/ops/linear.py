"""``mixq::linear_int``: the integer linear instruction with a kernel chosen at run time for the CPU it runs on.

:func:`mixq_compile.ir.instructions.linear_int` (the reference) multiplies int8 codes with ``torch._int_mm``. With
VNNI that is oneDNN's exact ``vpdpbusd`` kernel and ~4× faster than an FP32 GEMM; without VNNI (AVX2, AVX-512
without VNNI) ATen has no fast int8 kernel and ``_int_mm`` is ~35× *slower* than FP32 (Cora's 2708 × 1433 × 128:
510 ms vs 14 ms on an AVX2-only Zen 3). So the torch backend's programs call this op instead, which picks:

- ``"int8_amx"`` (level "amx": AMX-INT8 tiles, and the native kernels built): the native AMX GEMM
  (``gemm_s8_amx`` in ``native_kernels.c``), the zero-point/bias terms and a requantize epilogue applied to each
  block of rows while in cache. oneDNN behind ``_int_mm`` runs its VNNI kernel on these CPUs: 1M × 128 × 256 took
  ~107 ms per call in 2,048-row blocks (plus 17 ms adding the offsets) against 87 ms for the tiles writing int32;
- ``"int8_vnni"`` (level "vnni", :mod:`mixq_compile.cpu`): ``torch._int_mm``;
- ``"int8_pairs"`` (levels "avx2" and "avx512", the native kernels built): the native GEMM of int16 pairs
  (``gemm_s8_pairs``: AVX2 ``vpmaddwd``, which cannot saturate on int8 codes), epilogue applied per row as the AMX
  kernel's. Intel Xeon forced to AVX2, 2 threads, with requantize, against the FP32 path below: 2708 x 128 x 7
  (Cora's second layer) 257 -> 73 us, 100k x 256 x 16 39 -> 3.9 ms, 100k x 128 x 256 37.6 -> 27.3 ms; the Cora
  GCN artifact 1.49 -> 1.26 ms, the 1M-node one 1083 -> 708 ms (all 8-bit);
- ``"float_exact"`` elsewhere (the portable build, an int16 operand, no C compiler): the same sums by the FP32
  GEMM, exact by construction. Every product of two int8
  codes has magnitude ≤ 2^14, so any partial sum of ≤ 1024 of them is an integer of magnitude ≤ 2^24, which float32
  represents exactly: whatever order or FMA the BLAS uses, each K-chunk of 1024 gives the exact integer, and the
  chunks are added in int32 (wrap-around, as the reference). Wider codes (int16) use float64 chunks the same way.
  If a reduced-precision FP32 matmul mode is switched on (``torch.set_float32_matmul_precision`` other than
  "highest"), float64 is used instead.

Whichever path runs, the result equals the reference bit for bit (tested on every path this CPU can run).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import cpu
from ..ir import instructions as K
from ..ir.instructions import container_dtype
from . import buffers, native
from .derived import derived
from .op_registry import operator

_EXACT_BITS = {torch.float32: 24, torch.float64: 53}
#: the paths whose GEMM is native C (:func:`mixq_compile.ops.native.gemm`), with the epilogue applied in the kernel
NATIVE = ("int8_amx", "int8_pairs")


def int8_path() -> str:
    """The kernel :func:`linear_int` runs for int8 codes and weights on this CPU."""
    if native.amx_ready():
        return "int8_amx"
    if cpu.at_least("vnni"):
        return "int8_vnni"
    return "int8_pairs" if native.pairs_ready() else "float_exact"


def path(q_x: Tensor, w_t: Tensor) -> str:
    """The kernel :func:`linear_int` runs for these operands on this CPU (wider codes always take the float one)."""
    return gemm_path(q_x.dtype, w_t.dtype)


def gemm_path(codes: torch.dtype, weights: torch.dtype) -> str:
    """:func:`path` for operands of these dtypes."""
    return int8_path() if codes == torch.int8 and weights == torch.int8 else "float_exact"


def _magnitude(dtype: torch.dtype) -> int:
    info = torch.iinfo(dtype)
    return max(-info.min, info.max)


def float_exact_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for integer ``a`` ``[M, K]`` and ``b`` ``[K, N]`` in int32 (wrap-around), via float GEMMs over
    K-chunks small enough that every partial sum is exact."""
    bound = _magnitude(a.dtype) * _magnitude(b.dtype)
    dtype = torch.float32
    if bound > 1 << 14 or torch.get_float32_matmul_precision() != "highest":
        dtype = torch.float64
    chunk = max(1, (1 << _EXACT_BITS[dtype]) // bound)
    out, b = None, _as_float(b, dtype)
    for start in range(0, a.shape[1], chunk):
        part = a[:, start : start + chunk].to(dtype) @ b[start : start + chunk]
        # a float64 chunk may exceed int32: reduced modulo 2^32 like the int32 GEMM
        part = part.to(torch.int64).to(torch.int32) if dtype == torch.float64 else part.to(torch.int32)
        out = part if out is None else out.add_(part)
    return torch.zeros((a.shape[0], b.shape[1]), dtype=torch.int32) if out is None else out


@derived
def _as_float(weights: Tensor, dtype: torch.dtype) -> Tensor:
    """The weights as floats (memoized: a program passes the same weight tensor on every call)."""
    return weights.to(dtype)


def _accumulate(flat: Tensor, w_t: Tensor, offset: Tensor) -> Tensor:
    """``flat @ w_t + offset`` in int32 (wrap-around) by this CPU's fastest exact kernel, for CPU ``[rows, in]``
    codes; ``offset`` (int32 ``[out]``) holds the zero-point and bias terms, added in one pass: in modular
    arithmetic ``acc - z * w_sum + bias == acc + (bias - z * w_sum)``, so the reference's integers."""
    kernel = path(flat, w_t)
    if kernel in NATIVE:
        return native.gemm(kernel, flat, w_t, offset)
    acc = torch._int_mm(flat, w_t) if kernel == "int8_vnni" else float_exact_matmul(flat, w_t)
    return acc.add_(offset)


@derived
def _offset(x_zero: Tensor, w_sum: Tensor, bias: Tensor | None) -> Tensor:
    """``bias - x_zero * w_sum`` in int32 (the terms :func:`_accumulate` adds; memoized: callers only read it)."""
    offset = -(x_zero.to(torch.int32) * w_sum.to(torch.int32))
    return offset if bias is None else offset.add_(bias)


@operator("linear_int")
def linear_int(q_x: Tensor, x_zero: Tensor, w_t: Tensor, w_sum: Tensor, bias: Tensor | None) -> Tensor:
    """:func:`~mixq_compile.ir.instructions.linear_int`, computed by the fastest exact kernel of this CPU."""
    if q_x.device.type != "cpu":
        return K.linear_int(q_x, x_zero, w_t, w_sum, bias)
    flat = q_x.reshape(-1, q_x.shape[-1])
    acc = _accumulate(flat, w_t, _offset(x_zero, w_sum, bias))
    return acc.reshape(*q_x.shape[:-1], w_t.shape[1])


@linear_int.register_fake
def _(q_x: Tensor, x_zero: Tensor, w_t: Tensor, w_sum: Tensor, bias: Tensor | None) -> Tensor:
    return q_x.new_empty((*q_x.shape[:-1], w_t.shape[1]), dtype=torch.int32)


#: bytes of the int32 accumulator block that :func:`linear_requantize` keeps in cache (2048 rows of 256 outputs)
BLOCK_BYTES = 2 << 20


def linear_requantize(
    q_x: Tensor, x_zero: Tensor, w_t: Tensor, w_sum: Tensor, bias: Tensor | None, epilogue: native.Epilogue
) -> Tensor:
    """``requantize(linear_int(q_x, ...))`` a block of rows at a time (:data:`BLOCK_BYTES` of int32 accumulators):
    each block's accumulators are requantized while they are in cache, into the codes' output.

    The same integers as the two ops one after the other, without their ``[rows, out]`` int32 tensor: on a big
    graph's input layer (1M x 256 outputs) that tensor is 1 GiB, faulted in page by page and read back from
    memory by the requantize (together ~0.5 s of a 2.5 s single-threaded forward pass)."""
    if q_x.device.type != "cpu":
        return epilogue.apply(torch.ops.mixq.linear_int(q_x, x_zero, w_t, w_sum, bias))
    flat = q_x.reshape(-1, q_x.shape[-1])
    kernel = path(flat, w_t)
    if kernel in NATIVE and native.supports_epilogue(epilogue, w_t.shape[1]):  # blocks in the kernel
        out = native.gemm(kernel, flat, w_t, _offset(x_zero, w_sum, bias), epilogue)
        return out.reshape(*q_x.shape[:-1], w_t.shape[1])
    rows_per_block = max(1, BLOCK_BYTES // (4 * max(1, w_t.shape[1])))
    code = epilogue.dtype
    out = buffers.empty((flat.shape[0], w_t.shape[1]), code)
    block = torch.empty((0, w_t.shape[1]), dtype=torch.int32)
    in_place = not epilogue.dequantizes and native.supports_requantize(block, epilogue.multiplier, epilogue.zero, code)
    offset = _offset(x_zero, w_sum, bias)  # once, not per block (1M rows: 505 blocks)
    for start in range(0, flat.shape[0], rows_per_block):
        acc = _accumulate(flat[start : start + rows_per_block], w_t, offset)
        rows = out[start : start + acc.shape[0]]
        if in_place:
            native.requantize(acc, epilogue.multiplier, epilogue.zero, epilogue.qmin, epilogue.qmax, code, rows)
        else:
            rows.copy_(epilogue.apply(acc))
    return out.reshape(*q_x.shape[:-1], w_t.shape[1])


@operator("linear_int_requantize")
def linear_int_requantize(
    q_x: Tensor,
    x_zero: Tensor,
    w_t: Tensor,
    w_sum: Tensor,
    bias: Tensor | None,
    multiplier: Tensor,
    out_zero: Tensor,
    out_qmin: int,
    out_qmax: int,
) -> Tensor:
    """``requantize(linear_int(...), multiplier, out_zero, out_qmin, out_qmax)`` in row blocks
    (:func:`linear_requantize`)."""
    return linear_requantize(q_x, x_zero, w_t, w_sum, bias, native.Epilogue(multiplier, out_zero, out_qmin, out_qmax))


@linear_int_requantize.register_fake
def _(q_x, x_zero, w_t, w_sum, bias, multiplier, out_zero, out_qmin, out_qmax) -> Tensor:
    return q_x.new_empty((*q_x.shape[:-1], w_t.shape[1]), dtype=container_dtype(out_qmin, out_qmax))


@operator("linear_int_dequantize")
def linear_int_dequantize(
    q_x: Tensor, x_zero: Tensor, w_t: Tensor, w_sum: Tensor, bias: Tensor | None, scale: Tensor
) -> Tensor:
    """``dequantize_acc(linear_int(...), scale)`` (an output layer) in row blocks (:func:`linear_requantize`)."""
    return linear_requantize(q_x, x_zero, w_t, w_sum, bias, native.Epilogue.dequantize(scale))


@linear_int_dequantize.register_fake
def _(q_x, x_zero, w_t, w_sum, bias, scale) -> Tensor:
    return K.dequantize_acc(q_x.new_empty((*q_x.shape[:-1], w_t.shape[1]), dtype=torch.int32), scale)

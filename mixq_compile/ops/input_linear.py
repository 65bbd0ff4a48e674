"""``mixq::quantize_linear``: an input layer's quantize instruction fused with the integer linear that reads it.

GNN node features are often sparse (bag-of-words, one-hot: Cora's are 98.7 % zeros). A feature equal to 0.0
quantizes to the zero-point, and ``(q - z) = 0`` adds nothing to ``Σ_k (q_k - z) W[k]``, so a kernel that reads x
once and multiplies only its non-zero features computes the same int32 accumulator as quantize -> int8 GEMM, at a
fraction of the cost (Cora: 0.6 ms instead of 0.64 + 0.82). The native kernel (:mod:`.native`) is used when it is
available and the features are sparse; otherwise the op is exactly ``linear_int(quantize(x))`` with the dense GEMM.
Whichever path runs, the result is the same int32 tensor (wrap-around int32 sums are order-independent).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ir.instructions import container_dtype
from ..ir.signature import all_finite, non_finite_error
from . import native
from .derived import derived
from .linear import gemm_path, linear_requantize
from .op_registry import operator
from .packed import unpack

#: non-zero fraction of the features up to which the zero-skipping kernel runs instead of quantize + the dense int8
#: GEMM, by the GEMM's path (:func:`.linear.gemm_path`), decided per call. Crossovers on Cora-shaped features (2708 x
#: 1433 -> 128, requantized) at densities of 3-50 %, 2 threads, Intel Xeon: AMX tiles ~10 %, VNNI (``_int_mm``)
#: ~14 %, int16 pairs ~30 % (AVX2) and ~40 % (AVX-512), the FP32 path ~15 % (at 5 %: 0.79 against 1.11 ms on AMX,
#: 1.32 against 4.50 ms on AVX2); each threshold sits a little below. A single 3 % took the slower dense GEMM on
#: every level between 3 % and the crossover.
SPARSE_BELOW = {"int8_amx": 0.08, "int8_vnni": 0.10, "int8_pairs": 0.25, "float_exact": 0.10}
#: the TVM backend's export-time choice for its own kernels (``runtimes/tvm/backend.py``, ``sparse_input_layers``)
SPARSE_DENSITY = 0.03
_SAMPLE_ROWS = 16
#: packed weight tables whose int8 codes take at most this many bytes are read as int8 codes, unpacked once per
#: table: they stay in the caches (256 kB: the smallest L2 of recent x86 cores) and unpacking every gathered row is
#: then pure cost. Cora's input layer (1433 x 128), sparse kernel, 2 threads, Intel Xeon: 2-bit weights 537 / int8
#: 511 us (AMX build), 712 / 590 us (AVX2 build); the artifact still stores them packed.
UNPACK_BELOW_BYTES = 256 << 10


def density(x: Tensor) -> float:
    """Fraction of non-zero features, estimated on up to 16 evenly spaced rows (a decision about speed only)."""
    if x.numel() == 0:
        return 0.0
    rows = x.reshape(-1, x.shape[-1]) if x.dim() else x.reshape(1, 1)
    step = max(1, rows.shape[0] // _SAMPLE_ROWS)
    samples = (rows.shape[0] + step - 1) // step
    if rows.dtype == torch.float32 and rows.is_contiguous() and native.library() is not None:
        found = native.count_nonzero_rows(rows, step, samples)
    else:
        found = int(torch.count_nonzero(rows[::step]))
    return found / (samples * rows.shape[1])


@operator("quantize_linear")
def quantize_linear(
    x: Tensor,
    scale: Tensor,
    zero: Tensor,
    qmin: int,
    qmax: int,
    w_t: Tensor,
    w_sum: Tensor,
    bias: Tensor | None,
) -> Tensor:
    """``linear_int(quantize(x, scale, zero, qmin, qmax), zero, w_t, w_sum, bias)``, int32 ``[..., out]``.

    Raises :class:`~mixq_compile.errors.InputValueError` if ``x`` holds NaN or infinite values, on every path (the
    native one finds them while it scans x), so that an artifact need not test x in a pass of its own."""
    return _input_layer(x, scale, zero, qmin, qmax, w_t, w_sum, bias, None)


def _input_layer(
    x, scale, zero, qmin, qmax, w_t, w_sum, bias, epilogue: native.Epilogue | None,
    packed: native.PackedCodes | None = None,
) -> Tensor:  # fmt: skip
    """Every form of the op: the native sparse kernel for sparse features (with the requantize ``epilogue`` on its
    rows where the kernel takes it, else after it; on ``packed`` weights where they are), otherwise the NaN/Inf
    test, quantize and the dense GEMM (on the unpacked weights)."""
    if packed is not None and w_t.shape[0] * packed.channels <= UNPACK_BELOW_BYTES:
        w_t, packed = _unpacked(w_t, packed.qmin, packed.bits, packed.channels), None
    # the dense path's GEMM (packed weights are unpacked to int8 codes for it)
    gemm = gemm_path(container_dtype(qmin, qmax), torch.int8 if packed is not None else w_t.dtype)
    if native.supports_quantize_linear(x, scale, zero, w_t, packed) and density(x) <= SPARSE_BELOW[gemm]:
        outputs = w_t.shape[1] if packed is None else packed.channels
        if epilogue is None or native.supports_epilogue(epilogue, outputs):
            return native.quantize_linear(x, scale, zero, qmin, qmax, w_t, bias, epilogue, packed)
        acc = native.quantize_linear(x, scale, zero, qmin, qmax, w_t, bias, packed=packed)
    else:
        if packed is not None:
            w_t = unpack(w_t, packed.qmin, packed.bits, packed.channels)
        codes = _quantize_finite(x, scale, zero, qmin, qmax)
        if epilogue is not None:
            return linear_requantize(codes, zero, w_t, w_sum, bias, epilogue)
        acc = torch.ops.mixq.linear_int(codes, zero, w_t, w_sum, bias)
    return acc if epilogue is None else epilogue.apply(acc)


@derived(max_elements=UNPACK_BELOW_BYTES)
def _unpacked(w_t: Tensor, qmin: int, bits: int, channels: int) -> Tensor:
    """A packed weight table's int8 codes, unpacked once per table (see :data:`UNPACK_BELOW_BYTES`)."""
    return unpack(w_t, qmin, bits, channels).contiguous()


def _quantize_finite(x: Tensor, scale: Tensor, zero: Tensor, qmin: int, qmax: int) -> Tensor:
    """``mixq::quantize(x)``, refusing NaN/Inf features: in the native kernel's one pass where it runs."""
    code = container_dtype(qmin, qmax)
    if native.supports_quantize(x, scale, zero, code):
        return native.quantize(x, scale, zero, qmin, qmax, code, refuse_non_finite=True)
    if not all_finite(x):
        raise non_finite_error(native.NODE_FEATURES)
    return torch.ops.mixq.quantize(x, scale, zero, qmin, qmax)


@quantize_linear.register_fake
def _(x, scale, zero, qmin, qmax, w_t, w_sum, bias) -> Tensor:
    return x.new_empty((*x.shape[:-1], w_t.shape[1]), dtype=torch.int32)


@operator("quantize_linear_requantize")
def quantize_linear_requantize(
    x: Tensor,
    scale: Tensor,
    zero: Tensor,
    qmin: int,
    qmax: int,
    w_t: Tensor,
    w_sum: Tensor,
    bias: Tensor | None,
    multiplier: Tensor,
    out_zero: Tensor,
    out_qmin: int,
    out_qmax: int,
) -> Tensor:
    """``requantize(quantize_linear(...), multiplier, out_zero, out_qmin, out_qmax)``: the sparse kernel requantizes
    each finished row instead of storing its int32 accumulators (NaN/Inf refused as by ``quantize_linear``)."""
    epilogue = native.Epilogue(multiplier, out_zero, out_qmin, out_qmax)
    return _input_layer(x, scale, zero, qmin, qmax, w_t, w_sum, bias, epilogue)


@quantize_linear_requantize.register_fake
def _(x, scale, zero, qmin, qmax, w_t, w_sum, bias, multiplier, out_zero, out_qmin, out_qmax) -> Tensor:
    return x.new_empty((*x.shape[:-1], w_t.shape[1]), dtype=container_dtype(out_qmin, out_qmax))


@operator("quantize_linear_packed")
def quantize_linear_packed(
    x: Tensor,
    scale: Tensor,
    zero: Tensor,
    qmin: int,
    qmax: int,
    w_t: Tensor,
    w_qmin: int,
    w_bits: int,
    out_features: int,
    w_sum: Tensor,
    bias: Tensor | None,
) -> Tensor:
    """``mixq::quantize_linear`` on packed weights (``w_bits`` a code, offset ``w_qmin``, ``out_features`` codes a
    row of ``w_t``; :mod:`.packed`)."""
    packed = native.PackedCodes(w_bits, w_qmin, out_features)
    return _input_layer(x, scale, zero, qmin, qmax, w_t, w_sum, bias, None, packed)


@quantize_linear_packed.register_fake
def _(x, scale, zero, qmin, qmax, w_t, w_qmin, w_bits, out_features, w_sum, bias) -> Tensor:
    return x.new_empty((*x.shape[:-1], out_features), dtype=torch.int32)


@operator("quantize_linear_packed_requantize")
def quantize_linear_packed_requantize(
    x: Tensor,
    scale: Tensor,
    zero: Tensor,
    qmin: int,
    qmax: int,
    w_t: Tensor,
    w_qmin: int,
    w_bits: int,
    out_features: int,
    w_sum: Tensor,
    bias: Tensor | None,
    multiplier: Tensor,
    out_zero: Tensor,
    out_qmin: int,
    out_qmax: int,
) -> Tensor:
    """``mixq::quantize_linear_requantize`` on packed weights."""
    packed = native.PackedCodes(w_bits, w_qmin, out_features)
    epilogue = native.Epilogue(multiplier, out_zero, out_qmin, out_qmax)
    return _input_layer(x, scale, zero, qmin, qmax, w_t, w_sum, bias, epilogue, packed)


@quantize_linear_packed_requantize.register_fake
def _(x, scale, zero, qmin, qmax, w_t, w_qmin, w_bits, out_features, w_sum, bias, multiplier, out_zero, out_qmin,
      out_qmax) -> Tensor:  # fmt: skip
    return x.new_empty((*x.shape[:-1], out_features), dtype=container_dtype(out_qmin, out_qmax))

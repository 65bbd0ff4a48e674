"""``mixq::csr_sum``: a sum aggregation as one sparse-matrix product, exact on integer codes.

The integer program aggregates with a gather -> center -> multiply -> scatter-add chain, which materialises an
``[E, C]`` int32 message tensor and adds it with atomics. Over edges sorted by target (done once per graph in the
structure program, :func:`mixq_compile.lowering.csr_aggregation.sorted_structure`) the same sum is a CSR
matrix times the centered code table, which MKL's sparse kernels compute without any per-edge tensor.

Exactness: every product and partial sum is an integer of magnitude at most
``max|w| * max in-degree * (container range)`` (255 for int8 codes); below 2**24 float32 represents all of them
exactly, so the float
accumulation equals the int32 one bit for bit in any order. Above that bound the op computes in float64 (exact below
2**53, far beyond the int32 accumulator it replaces). Float tables (FP32 programs) are summed in float32.

Integer tables are summed by a native C kernel (:mod:`.native`: int32 arithmetic, no float round trip, ~20× faster
than the ATen path below) wherever a C compiler is available; the ATen path computes the same sums without one.

Registered as a ``torch.library`` custom op so that ``torch.export`` keeps it as one node and AOTInductor calls it;
loading a program that uses it needs ``import mixq_compile`` (which registers it).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..ir import instructions as K
from ..ir.instructions import container_dtype
from . import native
from .op_registry import operator

_FLOAT32_EXACT = 2**24


@operator("csr_sum")
def csr_sum(dst: Tensor, src: Tensor, weight: Tensor | None, table: Tensor, zero: Tensor | None, rows: int) -> Tensor:
    """``out[r] = Σ_{e: dst[e] = r} weight[e] * (table[src[e]] - zero)`` for ``dst`` sorted ascending.

    ``dst``, ``src``: int64 ``[E]``; ``weight``: ``[E]`` (integer or float) or ``None`` for 1; ``table``: ``[N, C]``
    codes (int8/int16/int32) or floats; ``zero``: the table's zero-point (0-d or ``[C]``) or ``None``. Returns int32
    ``[rows, C]`` for integer tables, the table's dtype otherwise.
    """
    if native.supports_csr_sum(table, weight):
        return native.csr_sum(dst, src, weight, table, zero, rows)
    integer = not table.is_floating_point()
    dtype = torch.float64 if table.dtype == torch.float64 else torch.float32
    rowptr = torch._convert_indices_from_coo_to_csr(dst, rows, out_int32=False)
    if integer and src.numel() > 0 and rows > 0 and table.numel() > 0:
        info = torch.iinfo(table.dtype)  # codes and zero-points both lie in the container's range
        degree = int((rowptr[1:] - rowptr[:-1]).max())
        largest = 1.0 if weight is None else float(weight.double().abs().max())  # weights past 2**24 too
        if largest * degree * (info.max - info.min) >= _FLOAT32_EXACT:
            dtype = torch.float64
    values = torch.ones(src.shape[0], dtype=dtype) if weight is None else weight.reshape(-1).to(dtype)
    centered = table.to(dtype) if zero is None else table.to(dtype) - zero.to(dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        matrix = torch.sparse_csr_tensor(rowptr, src, values, (rows, table.shape[0]), check_invariants=False)
    out = torch.sparse.mm(matrix, centered)
    # through int64: a float64 sum past the int32 range converts to INT_MIN directly, modulo 2**32 this way
    return out.to(torch.int64).to(torch.int32) if integer else out.to(table.dtype)


@csr_sum.register_fake
def _(dst: Tensor, src: Tensor, weight: Tensor | None, table: Tensor, zero: Tensor | None, rows: int) -> Tensor:
    dtype = table.dtype if table.is_floating_point() else torch.int32
    return table.new_empty((rows, table.shape[1]), dtype=dtype)


def sum_rows(
    dst: Tensor,
    src: Tensor,
    weight: Tensor | None,
    table: Tensor,
    zero: Tensor | None,
    rows: int,
    epilogue: native.Epilogue | None = None,
) -> Tensor:
    """:func:`csr_sum`, followed by ``epilogue`` where one is given: applied on each row by the native kernel where
    it takes it, after the sums otherwise. ``mixq::csr_sum_requantize`` and the ops over narrow and packed codes
    (for tables they read unpacked) share it."""
    fused = epilogue is not None and native.supports_epilogue(epilogue, table.shape[1])
    if fused and native.supports_csr_sum(table, weight):
        return native.csr_sum(dst, src, weight, table, zero, rows, epilogue)
    acc = csr_sum(dst, src, weight, table, zero, rows)
    return acc if epilogue is None else epilogue.apply(acc)


@operator("csr_sum_requantize")
def csr_sum_requantize(
    dst: Tensor,
    src: Tensor,
    weight: Tensor | None,
    table: Tensor,
    zero: Tensor | None,
    rows: int,
    multiplier: Tensor,
    out_zero: Tensor,
    qmin: int,
    qmax: int,
) -> Tensor:
    """``requantize(csr_sum(...), multiplier, out_zero, qmin, qmax)``: with the native kernels each finished row is
    requantized in place of being stored, so the ``[rows, C]`` int32 sums are never materialised."""
    return sum_rows(dst, src, weight, table, zero, rows, native.Epilogue(multiplier, out_zero, qmin, qmax))


@csr_sum_requantize.register_fake
def _(dst, src, weight, table, zero, rows, multiplier, out_zero, qmin, qmax) -> Tensor:
    return table.new_empty((rows, table.shape[1]), dtype=container_dtype(qmin, qmax))


@operator("csr_sum_dequantize")
def csr_sum_dequantize(
    dst: Tensor, src: Tensor, weight: Tensor | None, table: Tensor, zero: Tensor | None, rows: int, scale: Tensor
) -> Tensor:
    """``dequantize_acc(csr_sum(...), scale)`` (an output aggregation): with the native kernels each finished row
    is written as floats, so neither the int32 sums nor a separate pass over them are made."""
    return sum_rows(dst, src, weight, table, zero, rows, native.Epilogue.dequantize(scale))


@csr_sum_dequantize.register_fake
def _(dst, src, weight, table, zero, rows, scale) -> Tensor:
    return K.dequantize_acc(table.new_empty((rows, table.shape[1]), dtype=torch.int32), scale)

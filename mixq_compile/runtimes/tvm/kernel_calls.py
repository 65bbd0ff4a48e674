"""Converter-side calls of the hand-scheduled TIR kernels (:mod:`.kernels`) that the integer and float converters
of the ``tvm`` backend share: row-blocked dense layers and the CSR aggregation."""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce

import numpy as np
from tvm import relax

from ...lowering.code_ranges import code_range
from ...lowering.csr_aggregation import Aggregation
from ...ops import packed as P
from ...ops.packed import packed_stride, packing_bits
from . import kernels as TK
from .schedule import static_extent as _static
from .translator import Converter, dtype_of, shape_of


def rows(c: Converter, x: relax.Expr, dense: Callable[[relax.Expr], relax.Expr]) -> relax.Expr:
    """Apply a 2-D row kernel to ``x`` of any rank (leading dims flattened into rows, restored after)."""
    shape = shape_of(x)
    if len(shape) == 2:
        return dense(x)
    rows = reduce(lambda a, b: a * b, shape[:-1], 1)
    out = dense(c.emit(relax.op.reshape(x, [rows, shape[-1]])))
    return c.emit(relax.op.reshape(out, [*shape[:-1], shape_of(out)[-1]]))


#: table dtype -> the aggregation's dtype, for the tables the CSR kernel takes.
_CSR_TABLES = {"int8": "int32", "int16": "int32", "int32": "int32", "float32": "float32"}


def csr_aggregation(c: Converter, agg: Aggregation, size: object, dtype: str) -> relax.Expr | None:
    """The CSR kernel for ``agg``: row pointers from the sorted targets, then one parallel row-sum. ``None`` when
    the shapes or dtypes do not fit the kernel; the caller then emits the generic scatter."""
    size = c.value(size)
    table = c.tensor(agg.table)
    shape = shape_of(table)
    if len(size) != 2 or len(shape) != 2 or _CSR_TABLES.get(dtype_of(table)) != dtype:
        return None
    rows, channels = size[0], _static(size[1])
    if channels is None or _static(shape[1]) != channels:
        return None
    c.csr_used += 1
    start = agg.extras
    dst, src = c.params[start], c.params[start + 1]
    weight = c.params[start + 2] if agg.weight is not None else relax.const(np.zeros(1, dtype))
    zero = np.zeros(channels, dtype)
    if agg.zero is not None:
        zero = np.broadcast_to(c.array(agg.zero).reshape(-1).astype(dtype), (channels,)).copy()
    rowptr = c.call_kernel(TK.csr_rowptr, "csr_rowptr", [dst], [rows + 1], "int64")
    # int8 rows shorter than a cache line cost one line a gather either way: such tables are never packed
    narrow = _narrow_codes(c, agg, dtype_of(table)) if channels >= P.PACK_FROM_ROW_BYTES else None
    if narrow is not None:
        c.narrow_used += 1
        qmin, bits = narrow
        w_dtype = dtype_of(weight) if agg.weight is not None else None
        kernel = TK.csr_aggregate_narrow(channels, bits, qmin, w_dtype, P.PACK_FROM_BYTES)
        args = [rowptr, src, weight, table, relax.const(zero.astype(np.int32))]
        scratch = ([shape[0], packed_stride(channels, bits)], "uint8")  # the packed table, when it is packed
        return c.call_kernel(kernel, "csr_aggregate_narrow", args, [rows, channels], dtype, scratch=scratch)
    kernel = TK.csr_aggregate(
        channels,
        dtype_of(table),
        dtype_of(weight) if agg.weight is not None else None,
        agg.zero is not None,
    )
    args = [rowptr, src, weight, table, relax.const(zero)]
    return c.call_kernel(kernel, "csr_aggregate", args, [rows, channels], dtype)


def _narrow_codes(c: Converter, agg: Aggregation, table_dtype: str) -> tuple[int, int] | None:
    """``(qmin, bits)`` of the aggregation's int8 codes when their producer clamps them to at most 16 levels
    (:func:`~mixq_compile.lowering.code_ranges.code_range`; ``bits`` 2 or 4), else None: read as int8."""
    if not c.packed or table_dtype != "int8":
        return None
    bounds = code_range(agg.table)
    bits = packing_bits(*bounds) if bounds is not None else None
    return None if bits is None else (bounds[0], bits)

"""Packed sub-byte codes: ``mixq::pack`` and the aggregation and input-layer ops that read packed tables.

Codes of at most 4 bits live in int8 containers in the integer program. Stored packed (two a byte at 4 bits, four
at 2 bits), a gathered row reads ``C * bits / 8`` bytes instead of ``C``: the aggregation of a graph whose code
table does not fit in the caches waits for cache lines, and fetches 2x / 4x fewer of them; an input layer whose
weights are 2-bit reads 4x fewer weight bytes, and the artifact stores them 4x smaller.

Layout (shared with ``native_kernels.c``): a code ``q`` in ``[qmin, qmin + 2**bits)`` is stored as
``u = q - qmin``; a row is cut into blocks of 16 bytes holding ``16 * (8 // bits)`` channels; channel ``p`` of a
block sits in byte ``p % 16`` at bit ``(p // 16) * bits``; a row takes :func:`packed_stride` bytes, the padding
codes being 0. The ops compute exactly what their unpacked forms compute on the unpacked codes: the native kernels
sum ``d * u`` and add ``(qmin - zero) * Σ d`` once per row; without them the codes are unpacked (:func:`unpack`)
and the unpacked op runs.

Programs aggregate narrow codes with ``mixq::csr_sum_narrow[_requantize]``, which packs the table and reads it
packed only where that pays (:func:`packing_pays`, decided per call: an artifact exported on a small graph serves
large ones), and otherwise reads the int8 codes as they are, as the TVM backend's ``csr_aggregate_narrow`` does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ir import instructions as K
from ..ir.instructions import container_dtype
from . import csr, native
from .op_registry import operator

PACKED_BITS = (2, 4)
#: code tables smaller than this are aggregated from their int8 codes (both backends): they stay in the caches,
#: where packing them and unpacking every gathered row cost more than the bytes saved. TVM's kernel, 2 threads,
#: Intel Xeon: 200k nodes, 2.2M edges, 256 channels (a 51 MB table, within its 480 MB L3): int8 47.5 ms, packing +
#: packed 4-bit 46.1, 2-bit 45.8; 1M nodes, 10M edges (256 MB): 427 / 281 / 232 ms; Cora (346 kB): packing costs
#: 0.07 ms an aggregation and gains nothing.
PACK_FROM_BYTES = 16 << 20
#: nor is a table packed whose int8 rows are shorter than a cache line: a gathered row then costs one line either
#: way (1M nodes x 16 channels at 2 bits, 10M edges: 56-83 ms packed + 7 ms packing, 46-54 ms as int8)
PACK_FROM_ROW_BYTES = 64


def packing_pays(table: Tensor) -> bool:
    """Whether aggregating this int8 code table ``[rows, C]`` reads it packed (:data:`PACK_FROM_BYTES`,
    :data:`PACK_FROM_ROW_BYTES`)."""
    return table.numel() * table.element_size() >= PACK_FROM_BYTES and table.shape[-1] >= PACK_FROM_ROW_BYTES


def packing_bits(qmin: int, qmax: int) -> int | None:
    """The packed width that holds codes in ``[qmin, qmax]`` (2 or 4), or None if they need a whole byte."""
    levels = qmax - qmin + 1
    return next((b for b in PACKED_BITS if levels <= 2**b), None)


def packed_stride(channels: int, bits: int) -> int:
    """Bytes of one packed row of ``channels`` codes: whole 16-byte blocks of ``16 * (8 // bits)`` channels."""
    per_block = 16 * (8 // bits)
    return (channels + per_block - 1) // per_block * 16


def _positions(channels: int, bits: int) -> tuple[Tensor, Tensor]:
    """(byte, bit shift) of every channel in a packed row."""
    per_block = 16 * (8 // bits)
    c = torch.arange(channels)
    p = c % per_block
    return c // per_block * 16 + p % 16, p // 16 * bits


def pack_reference(codes: Tensor, qmin: int, bits: int) -> Tensor:
    """:func:`pack` in ATen ops (no native kernels)."""
    rows = codes.reshape(-1, codes.shape[-1])
    channels = rows.shape[1]
    byte, shift = _positions(channels, bits)
    values = ((rows.to(torch.int32) - qmin) & (2**bits - 1)) << shift.to(torch.int32)
    out = torch.zeros((rows.shape[0], packed_stride(channels, bits)), dtype=torch.int32)
    out.index_add_(1, byte, values)  # the fields of one byte are disjoint: adding them is or-ing them
    return out.to(torch.uint8)


def unpack(packed: Tensor, qmin: int, bits: int, channels: int) -> Tensor:
    """The codes of a packed table, in their int8 container ``[rows, channels]``."""
    byte, shift = _positions(channels, bits)
    fields = (packed[:, byte].to(torch.int32) >> shift) & (2**bits - 1)
    return (fields + qmin).to(container_dtype(qmin, qmin + 2**bits - 1))


@operator("pack")
def pack(codes: Tensor, qmin: int, bits: int) -> Tensor:
    """Packed uint8 ``[rows, packed_stride(C, bits)]`` of codes ``[rows, C]`` that lie in ``[qmin, qmin + 2**bits)``
    (the producer's clamp guarantees it: a code outside would be cut to its low ``bits`` bits)."""
    if bits not in PACKED_BITS:
        raise ValueError(f"mixq::pack packs 2- or 4-bit codes, got bits={bits}")
    if codes.dtype == torch.int8 and codes.device.type == "cpu" and native.library() is not None:
        return native.pack_codes(codes, qmin, bits, packed_stride(codes.shape[-1], bits))
    return pack_reference(codes, qmin, bits)


@pack.register_fake
def _(codes: Tensor, qmin: int, bits: int) -> Tensor:
    return codes.new_empty((codes.shape[0], packed_stride(codes.shape[-1], bits)), dtype=torch.uint8)


def _csr_sum_packed(dst, src, weight, table, zero, rows, qmin, bits, channels, epilogue: native.Epilogue | None):
    layout = native.PackedCodes(bits, qmin, channels)
    if native.supports_csr_sum(table, weight, layout) and (
        epilogue is None or native.supports_epilogue(epilogue, channels)
    ):
        return native.csr_sum(dst, src, weight, table, zero, rows, epilogue, layout)
    return csr.sum_rows(dst, src, weight, unpack(table, qmin, bits, channels), zero, rows, epilogue)


@operator("csr_sum_packed")
def csr_sum_packed(
    dst: Tensor,
    src: Tensor,
    weight: Tensor | None,
    table: Tensor,
    zero: Tensor | None,
    rows: int,
    qmin: int,
    bits: int,
    channels: int,
) -> Tensor:
    """``mixq::csr_sum`` over a packed code table (``bits`` a code, ``channels`` codes a row, offset ``qmin``)."""
    return _csr_sum_packed(dst, src, weight, table, zero, rows, qmin, bits, channels, None)


@csr_sum_packed.register_fake
def _(dst, src, weight, table, zero, rows, qmin, bits, channels) -> Tensor:
    return table.new_empty((rows, channels), dtype=torch.int32)


@operator("csr_sum_packed_requantize")
def csr_sum_packed_requantize(
    dst: Tensor,
    src: Tensor,
    weight: Tensor | None,
    table: Tensor,
    zero: Tensor | None,
    rows: int,
    qmin: int,
    bits: int,
    channels: int,
    multiplier: Tensor,
    out_zero: Tensor,
    out_qmin: int,
    out_qmax: int,
) -> Tensor:
    """``mixq::csr_sum_requantize`` over a packed code table."""
    epilogue = native.Epilogue(multiplier, out_zero, out_qmin, out_qmax)
    return _csr_sum_packed(dst, src, weight, table, zero, rows, qmin, bits, channels, epilogue)


@csr_sum_packed_requantize.register_fake
def _(dst, src, weight, table, zero, rows, qmin, bits, channels, multiplier, out_zero, out_qmin, out_qmax) -> Tensor:
    return table.new_empty((rows, channels), dtype=container_dtype(out_qmin, out_qmax))


def _csr_sum_narrow(dst, src, weight, table, zero, rows, qmin, bits, epilogue: native.Epilogue | None):
    if packing_pays(table):
        packed = torch.ops.mixq.pack(table, qmin, bits)
        return _csr_sum_packed(dst, src, weight, packed, zero, rows, qmin, bits, table.shape[1], epilogue)
    return csr.sum_rows(dst, src, weight, table, zero, rows, epilogue)


@operator("csr_sum_narrow")
def csr_sum_narrow(
    dst: Tensor, src: Tensor, weight: Tensor | None, table: Tensor, zero: Tensor | None, rows: int, qmin: int, bits: int
) -> Tensor:
    """``mixq::csr_sum`` over an int8 table of ``bits``-bit codes (``[qmin, qmin + 2**bits)``, the producer's clamp),
    read packed where :func:`packing_pays`."""
    return _csr_sum_narrow(dst, src, weight, table, zero, rows, qmin, bits, None)


@csr_sum_narrow.register_fake
def _(dst, src, weight, table, zero, rows, qmin, bits) -> Tensor:
    return table.new_empty((rows, table.shape[1]), dtype=torch.int32)


@operator("csr_sum_narrow_requantize")
def csr_sum_narrow_requantize(
    dst: Tensor,
    src: Tensor,
    weight: Tensor | None,
    table: Tensor,
    zero: Tensor | None,
    rows: int,
    qmin: int,
    bits: int,
    multiplier: Tensor,
    out_zero: Tensor,
    out_qmin: int,
    out_qmax: int,
) -> Tensor:
    """``mixq::csr_sum_requantize`` over an int8 table of ``bits``-bit codes, read packed where
    :func:`packing_pays`."""
    epilogue = native.Epilogue(multiplier, out_zero, out_qmin, out_qmax)
    return _csr_sum_narrow(dst, src, weight, table, zero, rows, qmin, bits, epilogue)


@csr_sum_narrow_requantize.register_fake
def _(dst, src, weight, table, zero, rows, qmin, bits, multiplier, out_zero, out_qmin, out_qmax) -> Tensor:
    return table.new_empty((rows, table.shape[1]), dtype=container_dtype(out_qmin, out_qmax))


@operator("csr_sum_narrow_dequantize")
def csr_sum_narrow_dequantize(
    dst: Tensor,
    src: Tensor,
    weight: Tensor | None,
    table: Tensor,
    zero: Tensor | None,
    rows: int,
    qmin: int,
    bits: int,
    scale: Tensor,
) -> Tensor:
    """``mixq::csr_sum_dequantize`` over an int8 table of ``bits``-bit codes, read packed where
    :func:`packing_pays`."""
    return _csr_sum_narrow(dst, src, weight, table, zero, rows, qmin, bits, native.Epilogue.dequantize(scale))


@csr_sum_narrow_dequantize.register_fake
def _(dst, src, weight, table, zero, rows, qmin, bits, scale) -> Tensor:
    return K.dequantize_acc(table.new_empty((rows, table.shape[1]), dtype=torch.int32), scale)

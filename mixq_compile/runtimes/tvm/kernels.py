"""Hand-scheduled TIR kernels for the TVM backend's hot spots: dense layers and CSR aggregation.

TVM's default CPU pipeline gives these loops no schedule (single thread, scalar; ~50x slower than PyTorch on
Cora, TOOLCHAIN_NOTES.md §Q4), and MetaSchedule tuning takes minutes per model. These PrimFuncs are written already
scheduled — parallel over rows (``num-cores`` threads), vectorized over output channels — and are marked
``tirx.is_scheduled`` so later passes leave them alone. Shapes are baked in except the row/edge counts, which stay
symbolic (one build serves every graph size).

- :func:`dense_vnni`: int8 x int8 -> int32 with AVX-512 VNNI (``vpdpbusd``, 64 MACs per instruction). ``vpdpbusd``
  multiplies *unsigned* by signed bytes, so activations are flipped to ``q + 128`` (xor 0x80) and the extra
  ``128 * Σ_k W`` is folded, with the zero-point and bias, into one per-channel correction. The sums are exact
  (4 products of |u8 * s8| < 2**15 per lane and step, int32 accumulation).
- :func:`dense_int_f32`: the same int8 product where there is no VNNI (AVX2, AVX-512F, portable builds), computed
  by float32 FMAs, exact by construction: each product of two int8 codes is at most 2**14 in magnitude, so a sum
  of up to 1024 of them is an integer below 2**24, which float32 holds exactly whatever the order; each 1024-step
  K-chunk is converted to int32 and added there (wrap-around, as the reference). It runs at the FP32 kernel's speed.
- :func:`dense_f32`: float32 ``x @ W^T + b`` with the row kept in registers (broadcast-FMA).
- :func:`quantize_linear_sparse`: the input layer's quantize fused with its integer GEMM, multiplying only the
  non-zero features (sparse bag-of-words / one-hot inputs), as the torch backend's ``mixq::quantize_linear``.
- :func:`csr_rowptr` + :func:`csr_aggregate`: sum aggregation over edges sorted by target (sorted once, in the
  structure program): each output row sums its own contiguous edge range, so rows run in parallel with no
  atomics, and integer sums stay exact.
- :func:`csr_aggregate_narrow`: the same aggregation over 2- or 4-bit codes, which it packs first when the table
  is larger than the caches (the layout of :mod:`mixq_compile.ops.packed`, shared with the torch backend's C
  kernels): each gathered row then reads ``C * bits / 8`` bytes instead of ``C``.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from ...ops.packed import PACK_FROM_BYTES, packed_stride

#: output channels per vector register (16 int32 / float32 lanes in a zmm register).
LANES = 16
#: bytes of K per ``vpdpbusd`` step.
VNNI_K = 4
#: xor mask that maps int8 codes q to the uint8 bytes of q + 128 in each byte of an int32.
_FLIP = -2139062144  # 0x80808080 as int32
_SCHEDULED = {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8}  # 8 = kOpaque: never fused


def _blocks(width: int) -> int:
    return (width + LANES - 1) // LANES


def pack_vnni_weight(w_t: np.ndarray) -> np.ndarray:
    """``W^T`` ([K, O] int8) -> ``[ceil(K/4), ceil(O/16) * 64]`` int8, the operand layout of ``vpdpbusd``.

    Lane ``j`` of output block ``b`` reads its 4 consecutive bytes ``W^T[4kb:4kb+4, 16b+j]``; padding is zero so it
    adds nothing to the sums.
    """
    k, o = w_t.shape
    kb, ob = (k + VNNI_K - 1) // VNNI_K, _blocks(o)
    padded = np.zeros((kb * VNNI_K, ob * LANES), np.int8)
    padded[:k, :o] = w_t
    return np.ascontiguousarray(padded.reshape(kb, VNNI_K, ob, LANES).transpose(0, 2, 3, 1).reshape(kb, ob * 64))


def vnni_correction(w_sum: np.ndarray, x_zero: int, bias: np.ndarray | None) -> np.ndarray:
    """Per-channel int32 term subtracted from the ``vpdpbusd`` sums: ``(128 + z_x) w_sum[o] - bias[o]``, with
    ``w_sum[o] = Σ_k W^T[k, o]``."""
    corr = (128 + int(x_zero)) * w_sum.astype(np.int64).reshape(-1)
    if bias is not None:
        corr = corr - bias.astype(np.int64).reshape(-1)
    return corr.astype(np.int32)


def row_block(o: int) -> int:
    """Rows computed together so each weight vector loaded is used several times: as many as keep the
    accumulators (rows x output vectors) within 24 of the 32 zmm registers (measured on Cora's 1433 -> 128 layer:
    1 row 10.2 ms, 2 rows 6.3 ms, 3 rows 4.1 ms under the same load; 6 rows spill and slow down again)."""
    return max(1, min(8, 24 // _blocks(o)))


@T.macro
def _vnni_step(acc, r, a32, W, s, ob):
    """``acc[r, :] += Σ_{4 bytes} u8(a32) * W[s]``: one ``vpdpbusd`` per output vector (a 4-byte K step)."""
    for b in T.unroll(ob):
        acc[r, T.ramp(b * 16, 1, 16)] = T.call_llvm_pure_intrin(
            "int32x16",
            "llvm.x86.avx512.vpdpbusd.512",
            acc.vload([r, b * 16], "int32x16"),
            T.reinterpret("int8x64", T.broadcast(a32, 16)),
            W.vload([s, b * 64], "int8x64"),
        )


@cache  # parsing TVMScript takes ~0.3 s; kernels are immutable and shared by every build
def dense_vnni(k: int, o: int) -> tirx.PrimFunc:
    """``C[n, o] = Σ_k A[n, k] W^T[k, o] - corr[o]`` for int8 A (codes, row-major ``[n, k]``) and a packed W.

    Rows go in blocks of :func:`row_block`; the last block re-computes row ``n - 1`` for its missing rows (same
    values, same thread), which keeps the loop free of predicates.
    """
    kb, ob, rows = (k + VNNI_K - 1) // VNNI_K, _blocks(o), row_block(o)
    k_full = k // VNNI_K  # steps whose 4 activation bytes are all in range; a tail step is padded below
    tail = k - k_full * VNNI_K

    @T.prim_func(s_tir=True)
    def kernel(a: T.handle, wp: T.handle, corr: T.handle, c: T.handle):
        T.func_attr(_SCHEDULED)
        n = T.int64()
        A = T.match_buffer(a, (n, k), "int8")
        W = T.match_buffer(wp, (kb, ob * 64), "int8")
        Corr = T.match_buffer(corr, (o,), "int32")
        C = T.match_buffer(c, (n, o), "int32")
        with T.sblock("root"):
            for i in T.parallel((n + rows - 1) // rows):
                acc = T.decl_buffer((rows, ob * LANES), "int32", scope="local")
                for r in T.unroll(rows):
                    for v in T.vectorized(ob * LANES):
                        acc[r, v] = 0
                for s in range(k_full):
                    for r in T.unroll(rows):
                        row = T.min(i * rows + r, n - 1)
                        a32 = T.bitwise_xor(T.reinterpret("int32", A.vload([row, s * 4], "int8x4")), T.int32(_FLIP))
                        _vnni_step(acc, r, a32, W, s, ob)
                if tail > 0:
                    # bytes past K read as -128, which flips to 0; their packed weights are 0 anyway
                    last = T.decl_buffer((VNNI_K,), "int8", scope="local")
                    for r in T.unroll(rows):
                        row = T.min(i * rows + r, n - 1)
                        for t in range(VNNI_K):
                            last[t] = T.if_then_else(
                                k_full * 4 + t < k, A[row, T.min(k_full * 4 + t, k - 1)], T.int8(-128)
                            )
                        a_last = T.bitwise_xor(T.reinterpret("int32", last.vload([0], "int8x4")), T.int32(_FLIP))
                        _vnni_step(acc, r, a_last, W, k_full, ob)
                for r in T.unroll(rows):
                    for v in T.vectorized(o):
                        C[T.min(i * rows + r, n - 1), v] = acc[r, v] - Corr[v]

    return kernel


#: K-steps per exact float32 chunk of :func:`dense_int_f32` (1024 * 128 * 128 = 2**24).
EXACT_CHUNK = 1024


@T.macro
def _exact_chunk(acc, part, A, W, i, rows, n, width, start, length):
    """``acc[r, :] += int32(Σ_{s < length} A[row, start + s] W[start + s, :])``: one chunk summed exactly in
    float32 (``length`` ≤ :data:`EXACT_CHUNK`), then added in int32."""
    for r in T.unroll(rows):
        for v in T.vectorized(width):
            part[r, v] = T.float32(0)
    for s in range(length):
        for r in T.unroll(rows):
            a_rs = T.Cast("float32", A[T.min(i * rows + r, n - 1), start + s])
            for v in T.vectorized(width):
                part[r, v] = part[r, v] + a_rs * W[start + s, v]
    for r in T.unroll(rows):
        for v in T.vectorized(width):
            acc[r, v] = acc[r, v] + T.Cast("int32", part[r, v])


@cache  # parsing TVMScript takes ~0.3 s; kernels are immutable and shared by every build
def dense_int_f32(k: int, o: int) -> tirx.PrimFunc:
    """``C[n, o] = Σ_k A[n, k] W^T[k, o] - corr[o]`` in int32 for int8 codes A and int8 weights given as float32
    (``W^T`` padded to whole vector registers), exact on any CPU (see the module docstring)."""
    width, rows = _blocks(o) * LANES, row_block(o)
    full, tail = k // EXACT_CHUNK, k % EXACT_CHUNK

    @T.prim_func(s_tir=True)
    def kernel(a: T.handle, w: T.handle, corr: T.handle, c: T.handle):
        T.func_attr(_SCHEDULED)
        n = T.int64()
        A = T.match_buffer(a, (n, k), "int8")
        W = T.match_buffer(w, (k, width), "float32")
        Corr = T.match_buffer(corr, (o,), "int32")
        C = T.match_buffer(c, (n, o), "int32")
        with T.sblock("root"):
            for i in T.parallel((n + rows - 1) // rows):
                acc = T.decl_buffer((rows, width), "int32", scope="local")
                part = T.decl_buffer((rows, width), "float32", scope="local")
                for r in T.unroll(rows):
                    for v in T.vectorized(width):
                        acc[r, v] = 0
                for chunk in range(full):
                    _exact_chunk(acc, part, A, W, i, rows, n, width, chunk * EXACT_CHUNK, EXACT_CHUNK)
                if tail > 0:
                    _exact_chunk(acc, part, A, W, i, rows, n, width, full * EXACT_CHUNK, tail)
                for r in T.unroll(rows):
                    for v in T.vectorized(o):
                        C[T.min(i * rows + r, n - 1), v] = acc[r, v] - Corr[v]

    return kernel


#: features tested for zero at once by :func:`quantize_linear_sparse` (one OR over their bits: a zmm of floats).
_ZERO_CHUNK = 16
#: rows per parallel task of :func:`quantize_linear_sparse` (its index buffers are allocated once per task).
_SPARSE_ROWS = 64
#: output channels accumulated in registers at once by :func:`quantize_linear_sparse` (8 zmm of int32).
_SPARSE_OUT_BLOCK = 128
_ABS_BITS = 0x7FFFFFFF  # float32 bits without the sign
_EXPONENT_BITS = 0x7F800000  # all set: NaN or +-inf


#: edges ahead of the one being summed whose table rows are prefetched (random rows of a table larger than the
#: caches: the gather waits on memory, as the torch backend's C kernel found)
_PREFETCH_EDGES = 16
#: tables from this size on are prefetched (smaller ones stay in the caches, where the prefetches only cost: Cora's
#: 346 kB table of 128 channels, 0.27 -> 0.31 ms)
_PREFETCH_FROM_BYTES = 4 << 20


def _prefetch(buffer: tirx.Buffer, row: tirx.PrimExpr, column: int) -> tirx.PrimExpr:
    """Prefetch (read, keep in all cache levels) the cache line holding ``buffer[row, column]``."""
    address = tirx.address_of(buffer[row, column])
    return tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address, 0, 3, 1)  # read, high locality, data


def _nonzero(a: tirx.PrimExpr) -> tirx.PrimExpr:
    """1 when a float32 is not +-0.0, NaN included, else 0; tested on the bits, as TVM simplifies
    ``!(a == 0)`` to ``a != 0``, which LLVM compiles to an ordered compare that is false for NaN."""
    return tirx.Cast("int32", tirx.bitwise_and(tirx.reinterpret("int32", a), tirx.IntImm("int32", _ABS_BITS)) != 0)


def _any_bits(chunk: tirx.PrimExpr) -> tirx.PrimExpr:
    """The OR of the bits of a float32 vector, as one int32 (LLVM lowers the reduction for every x86 level)."""
    lanes = f"int32x{_ZERO_CHUNK}"
    return tirx.call_llvm_pure_intrin("int32", "llvm.vector.reduce.or", tirx.reinterpret(lanes, chunk))


def _non_finite(a: tirx.PrimExpr) -> tirx.PrimExpr:
    """1 when a float32 is NaN or infinite, on the bits (float compares do not survive simplification)."""
    exponent = tirx.IntImm("int32", _EXPONENT_BITS)
    return tirx.Cast("int32", tirx.bitwise_and(tirx.reinterpret("int32", a), exponent) == exponent)


def _sparse_scan(k: int, scale: float, zero: float, qmin: int, qmax: int):
    """A macro that fills ``idx[:count]`` with row ``i``'s non-zero features and ``codes`` with their centered
    codes (``q - zero``), and ORs into ``bad[0]`` whether one of them is NaN or infinite: the scan both sparse
    input-layer kernels start each row with (:func:`quantize_linear_sparse`)."""
    chunks, z = k // _ZERO_CHUNK, int(zero)

    @T.macro
    def scan(A, i, idx, codes, count, bad):
        count[0] = 0
        for chunk in range(chunks):
            if _any_bits(A[i, T.Ramp(chunk * _ZERO_CHUNK, 1, _ZERO_CHUNK)]) != 0:
                for j in range(_ZERO_CHUNK):
                    feature = chunk * _ZERO_CHUNK + j
                    idx[count[0]] = T.int32(feature)
                    count[0] = count[0] + _nonzero(A[i, feature])
        for s in range(chunks * _ZERO_CHUNK, k):
            idx[count[0]] = T.int32(s)
            count[0] = count[0] + _nonzero(A[i, s])
        for j in range(count[0]):
            bad[0] = bad[0] | _non_finite(A[i, idx[j]])
            code = T.round(A[i, idx[j]] / T.float32(scale)) + T.float32(zero)
            codes[j] = T.Cast("int32", T.max(T.min(code, T.float32(qmax)), T.float32(qmin))) - z

    return scan


@cache  # parsing TVMScript takes ~0.3 s; kernels are immutable and shared by every build
def quantize_linear_sparse(k: int, o: int, scale: float, zero: float, qmin: int, qmax: int) -> tirx.PrimFunc:
    """``C[n, :] = bias + Σ_{k: A[n, k] != 0} (q(A[n, k]) - zero) W^T[k, :]`` in int32 for float32 features A,
    with ``q(a) = clamp(round(a / scale) + zero, qmin, qmax)`` (the quantize instruction's steps):
    the input layer's quantize and integer GEMM in one pass over A that multiplies only its non-zero features.

    Exact when 0.0 quantizes to ``zero`` (the caller checks): then a zero feature adds nothing, and int32 sums
    wrap around in any order. Sparse node features (Cora: 98.7 % zeros) cost about one read of A instead of a
    quantize pass, a codes tensor and a dense GEMM over K = 1433. Per row, as the torch backend's C kernel:
    (1) the indices of the non-zero features, found without a branch per feature: chunks of 16 whose bits OR to
    0 are skipped whole (one vector load and OR-reduction, ``llvm.vector.reduce.or``: 15 % faster on Cora than 16
    scalar ORs; ``-0.0`` only sends its chunk to the exact test), inside the others each index is stored and the
    count advanced by the non-zero test on the feature's bits (:func:`_nonzero`); (2) their codes, vectorized (a
    gather per 8/16); (3) the weight rows of those indices summed into accumulators held in registers, 128
    channels at a time. Scanning feature by feature with a branch (the first version) took 3.3 ms of Cora's 4.3 ms
    feature program.

    ``F[0]`` (the second output) becomes 1 when some feature is NaN or infinite, so that the artifact needs no pass
    of its own over A to refuse them (on Cora that pass cost more than a third of this kernel). A NaN is counted as a
    non-zero feature, which is where the test looks.
    """
    block = min(o, _SPARSE_OUT_BLOCK)
    blocks = (o + block - 1) // block

    @T.macro
    def row(C, W, B, i, idx, codes, count, acc, total):
        for b in range(blocks):
            for v in T.vectorized(block):
                acc[v] = B[T.min(b * block + v, o - 1)]
            for j in range(count[0]):
                for v in T.vectorized(block):
                    acc[v] = acc[v] + codes[j] * T.Cast("int32", W[idx[j], T.min(b * block + v, o - 1)])
            for v in range(block):
                if b * block + v < o:
                    C[i, b * block + v] = acc[v]

    return _sparse_input_kernel(k, o, _sparse_scan(k, scale, zero, qmin, qmax), (k, o), "int8", block, row)


@cache  # parsing TVMScript takes ~0.3 s; kernels are immutable and shared by every build
def quantize_linear_sparse_packed(
    k: int, o: int, scale: float, zero: float, qmin: int, qmax: int, w_bits: int, w_qmin: int
) -> tirx.PrimFunc:
    """:func:`quantize_linear_sparse` over 2- or 4-bit weights ``W^T = w_qmin + U`` stored packed (``P``, ``[k,
    packed_stride(o, w_bits)]`` uint8, the layout of :mod:`mixq_compile.ops.packed`): per row,
    ``bias + Σ_j code_j U[idx_j, :] + w_qmin Σ_j code_j``, the same integers. The artifact stores the weights
    ``w_bits / 8`` as large; each non-zero feature reads its weight row's packed bytes (128 channels: 32 at 2
    bits) and unpacks 16 channels per vector shift and mask."""
    per, stride = 8 // w_bits, packed_stride(o, w_bits)
    padded = stride * per
    add_row = _packed_row_adder(stride, w_bits)

    @T.macro
    def row(C, P, B, i, idx, codes, count, acc, total):
        for v in T.vectorized(padded):
            acc[v] = 0
        total[0] = 0
        for j in range(count[0]):
            total[0] = total[0] + codes[j]
            add_row(acc, P, idx[j], codes[j])
        for v in T.vectorized(o):
            C[i, v] = B[v] + acc[v] + total[0] * w_qmin

    scan = _sparse_scan(k, scale, zero, qmin, qmax)
    return _sparse_input_kernel(k, o, scan, (k, stride), "uint8", padded, row)


def _sparse_input_kernel(k: int, o: int, scan, w_shape: tuple[int, int], w_dtype: str, acc_size: int, row):
    """The sparse input-layer kernel around a row macro: rows in parallel tasks of :data:`_SPARSE_ROWS`, each row
    scanned (``scan``: its non-zero features and their codes) then summed by ``row(C, W, B, i, idx, codes, count,
    acc, total)`` into ``C[i, :]``; ``F[0]`` set when a feature is NaN or infinite."""
    rows = _SPARSE_ROWS

    @T.prim_func(s_tir=True)
    def kernel(a: T.handle, w: T.handle, bias: T.handle, c: T.handle, flag: T.handle):
        T.func_attr(_SCHEDULED)
        n = T.int64()
        A = T.match_buffer(a, (n, k), "float32")
        W = T.match_buffer(w, w_shape, w_dtype)
        B = T.match_buffer(bias, (o,), "int32")
        C = T.match_buffer(c, (n, o), "int32")
        F = T.match_buffer(flag, (1,), "int32")
        with T.sblock("root"):
            F[0] = 0
            for task in T.parallel((n + rows - 1) // rows):
                idx = T.decl_buffer((k,), "int32", scope="local")
                codes = T.decl_buffer((k,), "int32", scope="local")
                count = T.decl_buffer((1,), "int32", scope="local")
                bad = T.decl_buffer((1,), "int32", scope="local")
                total = T.decl_buffer((1,), "int32", scope="local")
                acc = T.decl_buffer((acc_size,), "int32", scope="local")
                bad[0] = 0
                for i in range(task * rows, T.min(n, task * rows + rows)):
                    scan(A, i, idx, codes, count, bad)
                    row(C, W, B, i, idx, codes, count, acc, total)
                if bad[0] != 0:
                    F[0] = 1  # every task that writes, writes 1

    return kernel


def exact_correction(w_sum: np.ndarray, x_zero: int, bias: np.ndarray | None) -> np.ndarray:
    """Per-channel int32 term subtracted from :func:`dense_int_f32`'s sums: ``z_x w_sum[o] - bias[o]``."""
    corr = int(x_zero) * w_sum.astype(np.int64).reshape(-1)
    if bias is not None:
        corr = corr - bias.astype(np.int64).reshape(-1)
    return corr.astype(np.int32)


@cache  # parsing TVMScript takes ~0.3 s; kernels are immutable and shared by every build
def dense_f32(k: int, o: int) -> tirx.PrimFunc:
    """``C[n, o] = Σ_k A[n, k] W^T[k, o] + bias[o]`` in float32; ``W^T`` is padded to whole vector registers and
    rows go in blocks of :func:`row_block` as in :func:`dense_vnni`."""
    width, rows = _blocks(o) * LANES, row_block(o)

    @T.prim_func(s_tir=True)
    def kernel(a: T.handle, w: T.handle, bias: T.handle, c: T.handle):
        T.func_attr(_SCHEDULED)
        n = T.int64()
        A = T.match_buffer(a, (n, k), "float32")
        W = T.match_buffer(w, (k, width), "float32")
        B = T.match_buffer(bias, (o,), "float32")
        C = T.match_buffer(c, (n, o), "float32")
        with T.sblock("root"):
            for i in T.parallel((n + rows - 1) // rows):
                acc = T.decl_buffer((rows, width), "float32", scope="local")
                for r in T.unroll(rows):
                    for v in T.vectorized(width):
                        acc[r, v] = T.float32(0)
                for s in range(k):
                    for r in T.unroll(rows):
                        for v in T.vectorized(width):
                            acc[r, v] = acc[r, v] + A[T.min(i * rows + r, n - 1), s] * W[s, v]
                for r in T.unroll(rows):
                    for v in T.vectorized(o):
                        C[T.min(i * rows + r, n - 1), v] = acc[r, v] + B[v]

    return kernel


def pad_columns(w_t: np.ndarray) -> np.ndarray:
    """``[K, O]`` -> ``[K, 16 * ceil(O/16)]`` with zero columns (whole vector registers per row)."""
    padded = np.zeros((w_t.shape[0], _blocks(w_t.shape[1]) * LANES), w_t.dtype)
    padded[:, : w_t.shape[1]] = w_t
    return padded


@T.prim_func(s_tir=True)
def csr_rowptr(dst: T.handle, rowptr: T.handle):
    """Row pointers of target-sorted edges: ``rowptr[i] = #{e : dst[e] < i}``. Sequential and O(E + N), which
    is microseconds for graphs of this size; out-of-range targets are ignored."""
    T.func_attr(_SCHEDULED)
    e = T.int64()
    rows = T.int64()
    Dst = T.match_buffer(dst, (e,), "int64")
    Rowptr = T.match_buffer(rowptr, (rows,), "int64")
    with T.sblock("root"):
        for i in range(rows):
            Rowptr[i] = T.int64(0)
        for j in range(e):
            if Dst[j] >= 0 and Dst[j] + 1 < rows:
                Rowptr[Dst[j] + 1] = Rowptr[Dst[j] + 1] + T.int64(1)
        for i in range(rows - 1):
            Rowptr[i + 1] = Rowptr[i + 1] + Rowptr[i]


def _csr_rows(channels: int, table_dtype: str, acc_dtype: str, use_weight: bool, centered: bool):
    """A macro: every output row ``i`` (in parallel) summed from its contiguous edge range, table rows prefetched
    :data:`_PREFETCH_EDGES` edges ahead when the table is larger than the caches. Shared by :func:`csr_aggregate`
    and the unpacked branch of :func:`csr_aggregate_narrow`."""
    item_bytes = np.dtype(table_dtype).itemsize
    line_items = 64 // item_bytes  # table entries per cache line
    lines, row_bytes = (channels + line_items - 1) // line_items, channels * item_bytes

    @T.macro
    def rows(Out, Rowptr, Col, Wt, H, Z, n, m, e):
        for i in T.parallel(n):
            for c in T.vectorized(channels):
                Out[i, c] = T.Cast(acc_dtype, 0)
            for j in range(Rowptr[i + 1] - Rowptr[i]):
                edge = Rowptr[i] + j
                if m * row_bytes >= _PREFETCH_FROM_BYTES and edge + _PREFETCH_EDGES < e:
                    for line in T.unroll(lines):
                        T.evaluate(_prefetch(H, Col[edge + _PREFETCH_EDGES], line * line_items))
                src = Col[edge]
                w = T.Cast(acc_dtype, Wt[edge]) if use_weight else T.Cast(acc_dtype, 1)
                for c in T.vectorized(channels):
                    if centered:
                        Out[i, c] = Out[i, c] + w * (T.Cast(acc_dtype, H[src, c]) - Z[c])
                    else:
                        Out[i, c] = Out[i, c] + w * T.Cast(acc_dtype, H[src, c])

    return rows


@cache  # parsing TVMScript takes ~0.3 s; kernels are immutable and shared by every build
def csr_aggregate(channels: int, table_dtype: str, weight_dtype: str | None, centered: bool) -> tirx.PrimFunc:
    """``out[i, c] = Σ_{e in row i} w[e] * (H[col[e], c] - zero[c])`` (int32 for codes, float32 for floats).

    The table rows of the edge :data:`_PREFETCH_EDGES` ahead are prefetched when the table is larger than the
    caches: rows are gathered at random, and the loop waited on memory (200k nodes, 2.2M edges, int8 codes: 256
    channels 240 -> 92 ms, 128 channels 87 -> 53 ms).

    ``w`` (edge weights) and ``zero`` (the table's zero-point) are optional: GIN/SAGE messages carry no weight and
    float tables no zero-point. Absent operands are still passed (as 1-element dummies) to keep one signature.
    """
    acc_dtype = "float32" if table_dtype == "float32" else "int32"
    w_dtype = weight_dtype or acc_dtype
    rows = _csr_rows(channels, table_dtype, acc_dtype, weight_dtype is not None, centered)

    @T.prim_func(s_tir=True)
    def kernel(rowptr: T.handle, col: T.handle, weight: T.handle, table: T.handle, zero: T.handle, out: T.handle):
        T.func_attr(_SCHEDULED)
        n = T.int64()
        m = T.int64()
        e = T.int64()
        ew = T.int64()
        Out = T.match_buffer(out, (n, channels), acc_dtype)
        Rowptr = T.match_buffer(rowptr, (n + 1,), "int64")
        Col = T.match_buffer(col, (e,), "int64")
        Wt = T.match_buffer(weight, (ew,), w_dtype)
        H = T.match_buffer(table, (m, channels), table_dtype)
        Z = T.match_buffer(zero, (channels,), acc_dtype)
        with T.sblock("root"):
            rows(Out, Rowptr, Col, Wt, H, Z, n, m, e)

    return kernel


def _packed_field(packed: tirx.PrimExpr, group: tirx.PrimExpr, bits: int) -> tirx.PrimExpr:
    """The unsigned code of the 16-channel ``group`` (within its 16-byte block) held in the bytes ``packed``."""
    return tirx.bitwise_and(
        tirx.shift_right(tirx.Cast("int32", packed), group * bits), tirx.IntImm("int32", 2**bits - 1)
    )


def _packed_row_adder(stride: int, bits: int):
    """A macro: ``acc[c] += factor * u[c]`` for the codes of one packed row ``P[row, :]`` (``stride`` bytes of
    ``bits``-bit codes, padded channels included), 16 channels per vector shift and mask. Shared by
    :func:`csr_aggregate_narrow` (factor: the edge weight) and :func:`quantize_linear_sparse_packed` (factor: the
    feature's code)."""
    per = 8 // bits

    @T.macro
    def add(acc, P, row, factor):
        for b in range(stride // 16):
            for group in T.unroll(per):
                for lane in T.vectorized(16):  # (a let-bound index would vectorize as one lane)
                    acc[b * 16 * per + group * 16 + lane] = acc[b * 16 * per + group * 16 + lane] + (
                        factor * _packed_field(P[row, b * 16 + lane], group, bits)
                    )

    return add


def _unsigned(code: tirx.PrimExpr, qmin: int, bits: int) -> tirx.PrimExpr:
    return tirx.bitwise_and(tirx.Cast("int32", code) - qmin, tirx.IntImm("int32", 2**bits - 1))


@cache  # parsing TVMScript takes ~0.3 s; kernels are immutable and shared by every build
def csr_aggregate_narrow(
    channels: int, bits: int, qmin: int, weight_dtype: str | None, pack_from: int = PACK_FROM_BYTES
) -> tirx.PrimFunc:
    """:func:`csr_aggregate` over int8 codes ``qmin + u`` with ``0 <= u < 2**bits`` (``bits`` 2 or 4), centered
    on ``zero`` (int32 per channel).

    A table of at least ``pack_from`` bytes (:data:`~mixq_compile.ops.packed.PACK_FROM_BYTES`) is first packed into
    ``P`` (the second output, scratch), one vectorized pass, and each edge then reads its row's ``packed_stride``
    bytes (256 channels: 128 at 4 bits, 64 at 2, against 256); the fields of one 16-byte load are 16 consecutive
    channels per shift, so unpacking is a vector shift and mask. Rows accumulate ``Σ_e w[e] u`` in a local buffer of
    the padded channel count (padding codes are 0) and add ``(qmin - zero) Σ_e w[e]`` once: the same integers.
    Smaller tables, in the caches, are summed as int8 codes by :func:`csr_aggregate`'s loop (unpacking cost 0.06 ms
    an aggregation on Cora).
    """
    per, stride = 8 // bits, packed_stride(channels, bits)
    blocks, padded = stride // 16, stride * per
    lines = (stride + 63) // 64
    use_weight = weight_dtype is not None
    w_dtype = weight_dtype or "int32"
    unpacked_rows = _csr_rows(channels, "int8", "int32", use_weight, True)
    add_row = _packed_row_adder(stride, bits)

    def code(H, r, c):  # the unsigned code of channel c of row r, 0 past the last channel
        return tirx.if_then_else(c < channels, _unsigned(H[r, tirx.min(c, channels - 1)], qmin, bits), 0)

    def packed_byte(H, r, b, lane):
        value = code(H, r, b * 16 * per + lane)
        for group in range(1, per):
            value = tirx.bitwise_or(value, tirx.shift_left(code(H, r, b * 16 * per + group * 16 + lane), group * bits))
        return tirx.Cast("uint8", value)

    @T.prim_func(s_tir=True)
    def kernel(
        rowptr: T.handle,
        col: T.handle,
        weight: T.handle,
        table: T.handle,
        zero: T.handle,
        out: T.handle,
        packed: T.handle,
    ):
        T.func_attr(_SCHEDULED)
        n = T.int64()
        m = T.int64()
        e = T.int64()
        ew = T.int64()
        Out = T.match_buffer(out, (n, channels), "int32")
        Rowptr = T.match_buffer(rowptr, (n + 1,), "int64")
        Col = T.match_buffer(col, (e,), "int64")
        Wt = T.match_buffer(weight, (ew,), w_dtype)
        H = T.match_buffer(table, (m, channels), "int8")
        Z = T.match_buffer(zero, (channels,), "int32")
        P = T.match_buffer(packed, (m, stride), "uint8")
        with T.sblock("root"):
            if m * channels < pack_from:
                unpacked_rows(Out, Rowptr, Col, Wt, H, Z, n, m, e)
            else:
                for r in T.parallel(m):
                    for b in range(blocks):
                        for lane in T.vectorized(16):
                            P[r, b * 16 + lane] = packed_byte(H, r, b, lane)
                for i in T.parallel(n):
                    acc = T.decl_buffer((padded,), "int32", scope="local")
                    total = T.decl_buffer((1,), "int32", scope="local")
                    for c in T.vectorized(padded):
                        acc[c] = 0
                    total[0] = 0
                    for j in range(Rowptr[i + 1] - Rowptr[i]):
                        edge = Rowptr[i] + j
                        if edge + _PREFETCH_EDGES < e:
                            for line in T.unroll(lines):
                                T.evaluate(_prefetch(P, Col[edge + _PREFETCH_EDGES], line * 64))
                        src = Col[edge]
                        w = T.Cast("int32", Wt[edge]) if use_weight else T.int32(1)
                        total[0] = total[0] + w
                        add_row(acc, P, src, w)
                    for c in T.vectorized(channels):
                        Out[i, c] = acc[c] + total[0] * (qmin - Z[c])

    return kernel

/* Native kernels of the torch backend's custom ops (see native.py for how they are built and loaded).
 *
 * csr_sum_<code>: integer CSR sum aggregation for mixq::csr_sum,
 *
 * out[r, c] = sum over edges e with dst[e] == r of  w[e] * (table[src[e], c] - zero[c])
 *
 * computed in int32 with two's-complement wrap-around, i.e. exactly what the integer program's int32
 * gather -> center -> multiply -> scatter-add chain computes (int32 addition is associative modulo 2^32, so the
 * summation order does not matter). dst must be sorted ascending: one pass finds each row's edge range, then rows
 * are summed in parallel with no atomics. The zero-point is folded out of the inner loop:
 * sum w (q - z) = sum w q - z sum w (mod 2^32).
 *
 * Returns 0 on success, 1 if dst is not sorted or out of [0, rows), 2 if a src index is out of [0, nodes).
 *
 * quantize_linear_<weight>: the quantize instruction fused with the integer linear that consumes its codes,
 * out[i, :] = bias + sum_k (q_ik - z) * w_t[k, :] in int32 (wrap-around, as the int32 GEMM), q_ik computed as in
 * quantize_<code>. Features equal to 0.0 quantize to the zero-point and add nothing, so each row's non-zero
 * features are found first (branch-free vector compares and compresses, nonzero_indices) and only those are
 * quantized and multiplied: sparse node features (bag-of-words, one-hot) cost about one read of x.
 * Every feature is looked at once anyway, so the kernel also tells whether any is NaN or infinite (non-zero, so
 * among those quantized): the artifact then skips its own pass over x for that check.
 * Returns 0, 3 if the per-thread scratch cannot be allocated, or 4 if a feature is NaN or infinite.
 *
 * csr_sum_*, quantize_linear_* and gemm_s8_amx take an optional epilogue (requant_t, NULL for int32 output): the
 * integer program's requantize instruction applied to each finished row, writing int8 codes instead of int32, or
 * its dequantize of an output (float32 values instead of int32).
 *
 * quantize_<code>: float32 -> codes for mixq::quantize, clamp(round_half_even(x / scale) + zero, qmin, qmax) with
 * the same IEEE rounding (a true division; built without fast-math or FMA contraction) as
 * the integer program's quantize instruction, so the codes are bit-identical; one pass over x, no temporaries.
 * requantize_<code>: int32 accumulators -> codes for mixq::requantize, clamp(round_half_even(float(acc) * M) +
 * zero, qmin, qmax), the requantize instruction's float steps in its order, in one pass.
 */
#define _DEFAULT_SOURCE /* madvise */
#include <stdint.h>
#include <stdlib.h>
#include <float.h>
#include <math.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <string.h>
#if defined(_OPENMP)
#include <omp.h>
#endif

/* ---- row accumulation, shared by csr_sum and quantize_linear ------------------------------------------------
 * acc[n] = k * base[n] + off + sum_i d[i] * w[idx[i] * stride + n] for n < out, in int32 with two's-complement
 * wrap-around (base NULL: 0; d NULL: d[i] = 1). csr_sum: base = the zero-points, k = -(sum of the row's edge
 * weights), idx = the row's edge sources, d = edge weights, w = the code table; quantize_linear: base = the bias,
 * k = 1, idx = the row's non-zero features, d = their centered codes, w = the weights. off is 0 except for packed
 * codes stored without their offset (see the packed section). The vector paths start from base in registers:
 * writing acc first and reloading it stalls on store forwarding (measured: 70 % of a 7-channel csr_sum). */
#define ACCUMULATE_ROWS(NAME, CODE, INDEX)                                                                   \
    static inline void NAME(int32_t *restrict acc, const int32_t *base, uint32_t k, uint32_t off,              \
                            const CODE *restrict w, int64_t stride, int64_t out, const INDEX *idx,            \
                            const int32_t *d, int64_t count) {                                               \
        for (int64_t n = 0; n < out; ++n) acc[n] = (int32_t)((base ? k * (uint32_t)base[n] : 0u) + off);      \
        for (int64_t i = 0; i < count; ++i) {                                                                \
            const uint32_t di = d ? (uint32_t)d[i] : 1u;                                                     \
            const CODE *restrict row = w + (int64_t)idx[i] * stride;                                         \
            for (int64_t n = 0; n < out; ++n) acc[n] = (int32_t)((uint32_t)acc[n] + di * (uint32_t)(int32_t)row[n]); \
        }                                                                                                    \
    }

ACCUMULATE_ROWS(accumulate_int16_i32, int16_t, int32_t)
ACCUMULATE_ROWS(accumulate_int16_i64, int16_t, int64_t)
ACCUMULATE_ROWS(accumulate_int32_i64, int32_t, int64_t)

/* int8 codes: one tile of outputs held in NV vector registers over all of a row's terms (the generic loop loads
 * and stores every accumulator once per term: ~3x slower at 128 channels, more at a handful). TILE_SWITCH calls
 * TILE(..., NV) with NV = vectors as a constant, so each case compiles to fully unrolled register code. */
#define TILE_SWITCH(TILE, ...)                                                                               \
    switch (vectors) {                                                                                       \
        case 1: TILE(__VA_ARGS__, 1); break;                                                                 \
        case 2: TILE(__VA_ARGS__, 2); break;                                                                 \
        case 3: TILE(__VA_ARGS__, 3); break;                                                                 \
        case 4: TILE(__VA_ARGS__, 4); break;                                                                 \
        case 5: TILE(__VA_ARGS__, 5); break;                                                                 \
        case 6: TILE(__VA_ARGS__, 6); break;                                                                 \
        case 7: TILE(__VA_ARGS__, 7); break;                                                                 \
        case 8: TILE(__VA_ARGS__, 8); break;                                                                 \
    }
/* AVX-512 has 32 vector registers: tiles of up to 16 (256 channels), so a row of 2-bit codes of 256 channels (one
 * cache line) is read in one pass over the edges, not fetched again by a second tile */
#define TILE_SWITCH16(TILE, ...)                                                                             \
    switch (vectors) {                                                                                       \
        case 9: TILE(__VA_ARGS__, 9); break;                                                                 \
        case 10: TILE(__VA_ARGS__, 10); break;                                                               \
        case 11: TILE(__VA_ARGS__, 11); break;                                                               \
        case 12: TILE(__VA_ARGS__, 12); break;                                                               \
        case 13: TILE(__VA_ARGS__, 13); break;                                                               \
        case 14: TILE(__VA_ARGS__, 14); break;                                                               \
        case 15: TILE(__VA_ARGS__, 15); break;                                                               \
        case 16: TILE(__VA_ARGS__, 16); break;                                                               \
        default: TILE_SWITCH(TILE, __VA_ARGS__)                                                              \
    }

/* Pairs of terms: where a row's multipliers d all fit int16 (edge-weight codes, centered 8-bit feature codes), two
 * terms share one vpmaddwd (vpdpwssd with VNNI): the codes of two gathered rows are widened to int16 and
 * interleaved, so each int32 lane gets d[i] * row_i[c] + d[i+1] * row_{i+1}[c] from one instruction instead of two
 * widening loads, two vpmulld (two uops each) and two adds. vpmaddwd does not saturate (only -32768 * -32768 * 2
 * wraps, to the same int32 that modular arithmetic gives), so the sums are the same integers. Measured, one
 * thread, 8-bit edge weights, Xeon with AVX-512 VNNI: Cora-sized (13k edges, 128 channels) 196 -> 149 us,
 * 1M edges x 256 channels 39 -> 34 ms (AVX2 build on the same CPU: 251 -> 210 us). */
static inline int fits_int16(const int32_t *d, int64_t count) {
    int32_t lo = 0, hi = 0;
    for (int64_t i = 0; i < count; ++i) {
        lo = d[i] < lo ? d[i] : lo;
        hi = d[i] > hi ? d[i] : hi;
    }
    return lo >= INT16_MIN && hi <= INT16_MAX;
}
static inline int32_t int16_pair(int32_t first, int32_t second) {
    return (int32_t)((uint32_t)(uint16_t)first | (uint32_t)(uint16_t)second << 16);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#if defined(__AVX512VNNI__)
#define DOT_PAIRS_512(acc, a, b) _mm512_dpwssd_epi32((acc), (a), (b))
#else
#define DOT_PAIRS_512(acc, a, b) _mm512_add_epi32((acc), _mm512_madd_epi16((a), (b)))
#endif
/* a[j] = k * base[16 j ..] + off (the last vector masked), or off alone without base */
#define ACC_INIT_512(a, base, k, off, tail, nv)                                                              \
    for (int j = 0; j < (nv); ++j)                                                                           \
        a[j] = _mm512_add_epi32(                                                                             \
            _mm512_set1_epi32((int32_t)(off)),                                                               \
            (base) ? _mm512_mullo_epi32(_mm512_set1_epi32((int32_t)(k)),                                     \
                                        _mm512_maskz_loadu_epi32(j == (nv) - 1 ? (tail) : 0xFFFF, (base) + 16 * j)) \
                   : _mm512_setzero_si512())
/* pairs of terms (see fits_int16): NV 16-channel outputs from (NV + 1) / 2 groups of 32 channels, each group's
 * int32 sums in two registers whose lanes are channel quads interleaved by the unpacks; WIDEN32(row, j, mask)
 * gives group j of a row (channels 32 j ..; mask: its valid bytes of int8 codes) as 32 int16 codes */
#define PAIR_TILE_512(NAME, CODE, INDEX, WIDEN32)                                                            \
    static inline __attribute__((always_inline)) void NAME(                                                 \
        int32_t *acc, const int32_t *base, uint32_t k, uint32_t off, const CODE *w, int64_t stride,          \
        const INDEX *idx, const int32_t *d, int64_t count, const __mmask16 tail, const int nv) {             \
        const int groups = (nv + 1) / 2;                                                                     \
        const __mmask32 last = nv % 2 ? (__mmask32)tail : ((__mmask32)tail << 16 | 0xFFFFu);                 \
        __m512i lo[8], hi[8];                                                                                \
        for (int j = 0; j < groups; ++j) lo[j] = hi[j] = _mm512_setzero_si512();                            \
        for (int64_t i = 0; i < count; i += 2) {                                                             \
            const int odd = i + 1 == count; /* the last term of an odd count pairs with zeros */             \
            const CODE *r0 = w + (int64_t)idx[i] * stride, *r1 = w + (int64_t)idx[odd ? i : i + 1] * stride;   \
            const __m512i pair = _mm512_set1_epi32(int16_pair(d[i], odd ? 0 : d[i + 1]));                   \
            for (int j = 0; j < groups; ++j) {                                                               \
                const __mmask32 m = j == groups - 1 ? last : 0xFFFFFFFFu;                                   \
                const __m512i c0 = WIDEN32(r0, j, m), c1 = WIDEN32(r1, j, m);                                \
                lo[j] = DOT_PAIRS_512(lo[j], _mm512_unpacklo_epi16(c0, c1), pair);                           \
                hi[j] = DOT_PAIRS_512(hi[j], _mm512_unpackhi_epi16(c0, c1), pair);                           \
            }                                                                                                \
        }                                                                                                    \
        __m512i a[16];                                                                                       \
        ACC_INIT_512(a, base, k, off, tail, nv);                                                             \
        /* lo holds channels 8q + 0..3 in 128-bit lane q, hi 8q + 4..7: back to channel order */             \
        const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);     \
        const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31); \
        for (int j = 0; j < groups; ++j) {                                                                   \
            a[2 * j] = _mm512_add_epi32(a[2 * j], _mm512_permutex2var_epi32(lo[j], first, hi[j]));           \
            if (2 * j + 1 < nv)                                                                              \
                a[2 * j + 1] = _mm512_add_epi32(a[2 * j + 1], _mm512_permutex2var_epi32(lo[j], second, hi[j])); \
        }                                                                                                    \
        for (int j = 0; j < nv; ++j) _mm512_mask_storeu_epi32(acc + 16 * j, j == nv - 1 ? tail : 0xFFFF, a[j]); \
    }
/* NAME: the row sums over `out` channels in tiles of up to 256 (NAME##_tile, or NAME##_pair_tile where the
 * multipliers fit int16), for codes of BITS bits (8: int8 tables; 2, 4: packed, whose tiles start on whole blocks) */
#define TILES_512(NAME, CODE, INDEX, BITS)                                                                   \
    static inline void NAME(int32_t *acc, const int32_t *base, uint32_t k, uint32_t off, const CODE *w,        \
                            int64_t stride, int64_t out, const INDEX *idx, const int32_t *d, int64_t count) { \
        const int pairs = d != NULL && count > 1 && fits_int16(d, count);                                    \
        for (int64_t n0 = 0; n0 < out; n0 += 256) {                                                          \
            const int64_t width = out - n0 < 256 ? out - n0 : 256, vectors = (width + 15) / 16;             \
            const __mmask16 tail = width % 16 ? (__mmask16)((1u << (width % 16)) - 1u) : (__mmask16)0xFFFF;  \
            const CODE *codes = w + n0 * (BITS) / 8;                                                         \
            if (pairs) {                                                                                     \
                TILE_SWITCH16(NAME##_pair_tile, acc + n0, base ? base + n0 : NULL, k, off, codes, stride, idx, d, \
                              count, tail)                                                                   \
            } else {                                                                                         \
                TILE_SWITCH16(NAME##_tile, acc + n0, base ? base + n0 : NULL, k, off, codes, stride, idx, d,  \
                              count, tail)                                                                   \
            }                                                                                                \
        }                                                                                                    \
    }
#define WIDEN32_INT8(row, j, m) _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8((m), (row) + 32 * (j)))
/* up to 256 outputs in NV zmm registers, the last one masked */
#define ACCUMULATE_INT8(NAME, INDEX)                                                                         \
    static inline __attribute__((always_inline)) void NAME##_tile(                                          \
        int32_t *acc, const int32_t *base, uint32_t k, uint32_t off, const int8_t *w, int64_t stride,        \
        const INDEX *idx, const int32_t *d, int64_t count, const __mmask16 tail, const int nv) {             \
        __m512i a[16];                                                                                       \
        ACC_INIT_512(a, base, k, off, tail, nv);                                                             \
        for (int64_t i = 0; i < count; ++i) {                                                                \
            const int8_t *row = w + (int64_t)idx[i] * stride;                                                \
            const __m512i di = _mm512_set1_epi32(d ? d[i] : 1);                                              \
            for (int j = 0; j < nv; ++j) {                                                                   \
                const __m128i codes = _mm_maskz_loadu_epi8(j == nv - 1 ? tail : 0xFFFF, row + 16 * j);       \
                const __m512i wide = _mm512_cvtepi8_epi32(codes);                                            \
                a[j] = _mm512_add_epi32(a[j], d ? _mm512_mullo_epi32(wide, di) : wide);                      \
            }                                                                                                \
        }                                                                                                    \
        for (int j = 0; j < nv; ++j) _mm512_mask_storeu_epi32(acc + 16 * j, j == nv - 1 ? tail : 0xFFFF, a[j]); \
    }                                                                                                        \
    PAIR_TILE_512(NAME##_pair_tile, int8_t, INDEX, WIDEN32_INT8)                                            \
    TILES_512(NAME, int8_t, INDEX, 8)
#elif defined(__AVX2__)
#if defined(__AVXVNNI__)
#define DOT_PAIRS_256(acc, a, b) _mm256_dpwssd_avx_epi32((acc), (a), (b))
#else
#define DOT_PAIRS_256(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
#endif
/* a[j] = k * base[8 j ..] + off, or off alone without base */
#define ACC_INIT_256(a, base, k, off, nv)                                                                    \
    for (int j = 0; j < (nv); ++j)                                                                           \
        a[j] = _mm256_add_epi32(_mm256_set1_epi32((int32_t)(off)),                                           \
                                (base) ? _mm256_mullo_epi32(_mm256_set1_epi32((int32_t)(k)),                 \
                                                            _mm256_loadu_si256((const __m256i *)((base) + 8 * j))) \
                                       : _mm256_setzero_si256())
/* up to 64 outputs in NV ymm registers; columns past the last multiple of 8 take the generic loop */
#define ACCUMULATE_INT8(NAME, INDEX)                                                                         \
    ACCUMULATE_ROWS(NAME##_generic, int8_t, INDEX)                                                           \
    static inline __attribute__((always_inline)) void NAME##_tile(                                          \
        int32_t *acc, const int32_t *base, uint32_t k, uint32_t off, const int8_t *w, int64_t stride,        \
        const INDEX *idx, const int32_t *d, int64_t count, const int nv) {                                   \
        __m256i a[8];                                                                                        \
        ACC_INIT_256(a, base, k, off, nv);                                                                   \
        for (int64_t i = 0; i < count; ++i) {                                                                \
            const int8_t *row = w + (int64_t)idx[i] * stride;                                                \
            const __m256i di = _mm256_set1_epi32(d ? d[i] : 1);                                              \
            for (int j = 0; j < nv; ++j) {                                                                   \
                const __m256i codes = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + 8 * j))); \
                a[j] = _mm256_add_epi32(a[j], d ? _mm256_mullo_epi32(codes, di) : codes);                   \
            }                                                                                                \
        }                                                                                                    \
        for (int j = 0; j < nv; ++j) _mm256_storeu_si256((__m256i *)(acc + 8 * j), a[j]);                    \
    }                                                                                                        \
    /* pairs of terms (see fits_int16): NV (even) 8-channel outputs from NV / 2 groups of 16 channels */       \
    static inline __attribute__((always_inline)) void NAME##_pair_tile(                                     \
        int32_t *acc, const int32_t *base, uint32_t k, uint32_t off, const int8_t *w, int64_t stride,        \
        const INDEX *idx, const int32_t *d, int64_t count, const int nv) {                                   \
        const int groups = nv / 2;                                                                           \
        __m256i lo[4], hi[4];                                                                                \
        for (int j = 0; j < groups; ++j) lo[j] = hi[j] = _mm256_setzero_si256();                            \
        for (int64_t i = 0; i < count; i += 2) {                                                             \
            const int odd = i + 1 == count; /* the last term of an odd count pairs with zeros */             \
            const int8_t *r0 = w + (int64_t)idx[i] * stride, *r1 = w + (int64_t)idx[odd ? i : i + 1] * stride; \
            const __m256i pair = _mm256_set1_epi32(int16_pair(d[i], odd ? 0 : d[i + 1]));                   \
            for (int j = 0; j < groups; ++j) {                                                               \
                const __m256i c0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(r0 + 16 * j)));  \
                const __m256i c1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(r1 + 16 * j)));  \
                lo[j] = DOT_PAIRS_256(lo[j], _mm256_unpacklo_epi16(c0, c1), pair);                           \
                hi[j] = DOT_PAIRS_256(hi[j], _mm256_unpackhi_epi16(c0, c1), pair);                           \
            }                                                                                                \
        }                                                                                                    \
        __m256i a[8];                                                                                        \
        ACC_INIT_256(a, base, k, off, 2 * groups);                                                           \
        for (int j = 0; j < groups; ++j) { /* lo: channels 0..3 and 8..11 of a group, hi: 4..7 and 12..15 */ \
            a[2 * j] = _mm256_add_epi32(a[2 * j], _mm256_permute2x128_si256(lo[j], hi[j], 0x20));            \
            a[2 * j + 1] = _mm256_add_epi32(a[2 * j + 1], _mm256_permute2x128_si256(lo[j], hi[j], 0x31));    \
        }                                                                                                    \
        for (int j = 0; j < 2 * groups; ++j) _mm256_storeu_si256((__m256i *)(acc + 8 * j), a[j]);            \
    }                                                                                                        \
    static inline void NAME(int32_t *acc, const int32_t *base, uint32_t k, uint32_t off, const int8_t *w,      \
                            int64_t stride, int64_t out, const INDEX *idx, const int32_t *d, int64_t count) { \
        const int64_t full = out / 8 * 8;                                                                    \
        const int64_t paired = d != NULL && count > 1 && fits_int16(d, count) ? out / 16 * 16 : 0;          \
        for (int64_t n0 = 0; n0 < paired; n0 += 64) {                                                        \
            const int64_t vectors = (paired - n0 < 64 ? paired - n0 : 64) / 8;                               \
            TILE_SWITCH(NAME##_pair_tile, acc + n0, base ? base + n0 : NULL, k, off, w + n0, stride, idx, d, count) \
        }                                                                                                    \
        for (int64_t n0 = paired; n0 < full; n0 += 64) {                                                     \
            const int64_t vectors = (full - n0 < 64 ? full - n0 : 64) / 8;                                   \
            TILE_SWITCH(NAME##_tile, acc + n0, base ? base + n0 : NULL, k, off, w + n0, stride, idx, d, count) \
        }                                                                                                    \
        NAME##_generic(acc + full, base ? base + full : NULL, k, off, w + full, stride, out - full, idx, d, count); \
    }
#else
#define ACCUMULATE_INT8(NAME, INDEX) ACCUMULATE_ROWS(NAME, int8_t, INDEX)
#endif

ACCUMULATE_INT8(accumulate_int8_i32, int32_t)
ACCUMULATE_INT8(accumulate_int8_i64, int64_t)

#if defined(_OPENMP)
#define THREAD_NUM(var) (var) = omp_get_thread_num()
#else
#define THREAD_NUM(var) (void)(var)
#endif

/* NaN and +-Inf are exactly the floats that are not <= FLT_MAX in magnitude (a compare that vectorizes) */
#define NOT_FINITE(v) (!(fabsf(v) <= FLT_MAX))

static inline float clampf(float v, float lo, float hi) {
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

/* quantize: x / scale rounded half to even, plus zero (one IEEE rounding, as the instruction) */
#define QUANTIZE_STEP(x, s, z) (rintf((x) / (s)) + (z))
/* requantize: round(float(acc) * multiplier) + zero, as the instruction (int32 -> float32 rounds to nearest) */
#define REQUANTIZE_STEP(a, m, z) (rintf((float)(a) * (m)) + (z))

/* The epilogue of the kernels: each finished int32 row (in per-thread scratch) goes straight to int8 codes of the
 * next grid, codes[r, c] = clamp(REQUANTIZE_STEP(acc[c], m[c], z[c]), qmin, qmax), or (values set: the dequantize
 * of a program output) to floats, values[r, c] = float(acc[c]) * m[c] (int32 -> float32 rounds to nearest, one
 * IEEE product: the instruction's acc.to(float32) * scale), so the [rows, C] int32 tensor and a separate pass
 * over it are never made. */
typedef struct {
    const float *multiplier, *zero; /* [C]; zero unused by a dequantize */
    float qmin, qmax;
    int8_t *codes;  /* [rows, C] */
    float *values;  /* [rows, C], or NULL: requantize into codes */
} requant_t;

/* Row tails of fewer than 16 channels (a GNN's 7 class scores) were left scalar by the compiler's vector loop (the
 * 7-class requantize was most of Cora's second-layer GEMM): with AVX-512 they take one masked 16-lane step, with
 * the same IEEE steps (int32 -> float32 to nearest, one product, rounding to nearest even, clamp, truncation of an
 * integral float). The whole 16-channel groups stay with the compiler's loop, which packs four vectors' bytes at
 * once (a masked loop over all channels measured 5-8 % slower at 128 channels). */
static inline void epilogue_tail(const int32_t *restrict acc, const int32_t *restrict offset, int64_t from,
                                   int64_t channels, const requant_t *rq, int64_t r) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
    if (from == channels) return;
    const __mmask16 lanes = (__mmask16)((1u << (channels - from)) - 1u);
    __m512i sums = _mm512_maskz_loadu_epi32(lanes, acc + from);
    if (offset) sums = _mm512_add_epi32(sums, _mm512_maskz_loadu_epi32(lanes, offset + from));
    const __m512 product = _mm512_mul_ps(_mm512_cvtepi32_ps(sums), _mm512_maskz_loadu_ps(lanes, rq->multiplier + from));
    if (rq->values) {
        _mm512_mask_storeu_ps(rq->values + r * channels + from, lanes, product);
        return;
    }
    const __m512 code = _mm512_add_ps(_mm512_roundscale_ps(product, _MM_FROUND_CUR_DIRECTION),
                                      _mm512_maskz_loadu_ps(lanes, rq->zero + from));
    const __m512 clamped = _mm512_min_ps(_mm512_max_ps(code, _mm512_set1_ps(rq->qmin)), _mm512_set1_ps(rq->qmax));
    _mm_mask_storeu_epi8(rq->codes + r * channels + from, lanes, _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(clamped)));
#else
    (void)acc, (void)offset, (void)from, (void)channels, (void)rq, (void)r;
#endif
}

/* acc[c] (+ offset[c], wrapping, where offset is given: the GEMM's zero-point and bias terms) through the epilogue */
static inline void epilogue_row(const int32_t *restrict acc, const int32_t *restrict offset, int64_t channels,
                                  const requant_t *rq, int64_t r) {
    /* fields copied out first: int8_t stores may alias anything, which would keep the loop scalar */
    const float *restrict m = rq->multiplier, *restrict z = rq->zero;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    const int64_t whole = channels / 16 * 16; /* the rest: epilogue_tail */
#else
    const int64_t whole = channels;
#endif
#define ROW_SUM(c) (offset ? (int32_t)((uint32_t)acc[c] + (uint32_t)offset[c]) : acc[c])
    if (rq->values) {
        float *restrict v = rq->values + r * channels;
        for (int64_t c = 0; c < whole; ++c) v[c] = (float)ROW_SUM(c) * m[c];
    } else {
        const float qmin = rq->qmin, qmax = rq->qmax;
        int8_t *restrict o = rq->codes + r * channels;
        for (int64_t c = 0; c < whole; ++c) o[c] = (int8_t)clampf(REQUANTIZE_STEP(ROW_SUM(c), m[c], z[c]), qmin, qmax);
    }
#undef ROW_SUM
    epilogue_tail(acc, offset, whole, channels, rq, r);
}

/* int32 slots rounded up to whole 64-byte lines plus one line: per-thread scratch rows then never share a cache
 * line (measured: sharing one line per row made a 2-thread csr_sum with epilogue 2.5x slower). */
static inline size_t padded_slots(size_t n) { return (n + 15) / 16 * 16 + 16; }

/* rowptr[r] = the first edge whose target is >= r, for targets sorted ascending in [0, rows): 1 if they are not.
 * Branch-free, in parallel: the first edge of each target row writes its pointer (through a pointer select: rows
 * start at ~1 edge in 5 on Cora, a branch the predictor misses), the others write a per-thread sink; rows without
 * edges then take the next row's pointer in one backward pass. Every write stays in [0, rows] whatever dst holds. */
static int row_pointers(const int64_t *dst, int64_t edges, int64_t rows, int64_t *rowptr, int threads) {
    const int64_t unset = -1;
    for (int64_t r = 0; r < rows; ++r) rowptr[r] = edges ? unset : 0;
    rowptr[rows] = edges;
    if (edges == 0) return 0;
    if ((uint64_t)dst[0] >= (uint64_t)rows) return 1;
    rowptr[dst[0]] = 0;
    int bad = 0;
    _Pragma("omp parallel num_threads(threads) reduction(|: bad)") {
        int64_t sink;
        _Pragma("omp for schedule(static)")
        for (int64_t e = 1; e < edges; ++e) {
            const int64_t previous = dst[e - 1], target = dst[e];
            const int ok = ((uint64_t)target < (uint64_t)rows) & (target >= previous);
            bad |= !ok;
            *(ok & (target != previous) ? rowptr + target : &sink) = e;
        }
    }
    if (bad) return 1;
    for (int64_t r = rows - 1; r >= 0; --r) rowptr[r] = rowptr[r] == unset ? rowptr[r + 1] : rowptr[r];
    return 0;
}

/* 2 if a source lies outside [0, nodes) (negative ones wrap to huge unsigned values): a branch-free OR that
 * vectorizes, in parallel */
static int check_sources(const int64_t *src, int64_t edges, int64_t nodes, int threads) {
    int bad = 0;
    _Pragma("omp parallel for num_threads(threads) schedule(static) reduction(|: bad)")
    for (int64_t e = 0; e < edges; ++e) bad |= (uint64_t)src[e] >= (uint64_t)nodes;
    return bad ? 2 : 0;
}

/* The CSR form of one graph's target-sorted edges, checked: rowptr (rows + 1 entries, see row_pointers) and every
 * source in [0, nodes). 0, or the status of the first check that fails. The kernels below index with rowptr and
 * src unchecked, so they are called only with the rowptr this returned for the same dst and src; it runs once
 * per graph (csr_rows in ops/native.py keeps it on the tensors), not once per aggregation call: 1M nodes, 10M
 * edges, 2 threads, Intel Xeon: 15.6 ms, against 70 ms for a 16-channel aggregation. */
int csr_structure(const int64_t *dst, const int64_t *src, int64_t edges, int64_t nodes, int64_t rows, int threads,
                  int64_t *rowptr) {
    const int status = row_pointers(dst, edges, rows, rowptr, threads);
    return status ? status : check_sources(src, edges, nodes, threads);
}

/* Gathered table rows are random accesses that the hardware prefetcher cannot predict: csr_sum asks for the lines
 * (up to 4) of every row it will gather PREFETCH_AHEAD edges ahead, across CSR rows (a graph's rows have ~10 edges
 * on average, too few for a look-ahead within one row; one within the tiles as well measured no different). Without
 * it, 2 threads keep too few misses in flight and every code width waits on memory latency alike (1M nodes, 10M
 * edges, 128 channels, int8, one thread: 864 -> 382 ms with huge pages, which ops/buffers.py asks for). The lines go
 * to L2 (hint T1), 32 edges ahead: the L2's queue keeps more misses in flight than L1's fill buffers (1M nodes, 10M
 * edges, int8, 2 threads, Intel Xeon: 256 channels 228 -> 211 ms, 128 channels 122 -> 111; 16 channels, 2- and
 * 4-bit rows and Cora unchanged). Prefetches edges [from, to); returns to. */
#define PREFETCH_AHEAD 32
static inline int64_t prefetch_rows(const void *table, int64_t row_bytes, const int64_t *src, int64_t from,
                                    int64_t to) {
#if defined(__AVX2__) || defined(__AVX512F__)
    const int64_t bytes = row_bytes < 256 ? row_bytes : 256;
    for (int64_t e = from; e < to; ++e)
        for (int64_t line = 0; line < bytes; line += 64)
            _mm_prefetch((const char *)table + src[e] * row_bytes + line, _MM_HINT_T1);
#else
    (void)table, (void)row_bytes, (void)src, (void)from;
#endif
    return to;
}

/* rowptr, src: what csr_structure returned and checked; base: the table's zero-points (for packed codes, zero -
 * qmin: see the packed section); STRIDE: a table row's length in CODE units for the given channels */
#define CSR_SUM(NAME, CODE, ACCUMULATE, STRIDE)                                                                        \
    int NAME(const int64_t *rowptr, const int64_t *src, const int32_t *weight, const CODE *table,            \
             const int32_t *base, int64_t edges, int64_t rows, int64_t channels, int threads, int32_t *out,   \
             const requant_t *rq) {                                                                          \
        const size_t row_slots = padded_slots((size_t)channels);                                            \
        int32_t *scratch = rq ? (int32_t *)aligned_alloc(64, (size_t)(threads > 0 ? threads : 1) * row_slots * 4) : NULL; \
        if (rq && !scratch) return 3;                                                                        \
        const int64_t row_bytes = (int64_t)(STRIDE(channels) * sizeof(CODE));                                \
        _Pragma("omp parallel num_threads(threads)") {                                                       \
        int64_t horizon = 0; /* the edges below it have had their table rows prefetched by this thread */   \
        _Pragma("omp for schedule(dynamic, 64)")                                                             \
        for (int64_t r = 0; r < rows; ++r) {                                                                 \
            int thread = 0;                                                                                  \
            THREAD_NUM(thread);                                                                             \
            int32_t *acc = rq ? scratch + (size_t)thread * row_slots : out + r * channels;                  \
            const int64_t first = rowptr[r], count = rowptr[r + 1] - first;                                  \
            horizon = prefetch_rows(table, row_bytes, src, horizon > first ? horizon : first,               \
                                    first + count + PREFETCH_AHEAD < edges ? first + count + PREFETCH_AHEAD : edges); \
            uint32_t wsum = (uint32_t)count;                                                                 \
            if (weight) {                                                                                    \
                wsum = 0;                                                                                    \
                for (int64_t e = first; e < first + count; ++e) wsum += (uint32_t)weight[e];                 \
            }                                                                                                \
            ACCUMULATE(acc, base, 0u - wsum, 0u, table, STRIDE(channels), channels, src + first,               \
                       weight ? weight + first : NULL, count);                                               \
            if (rq) epilogue_row(acc, NULL, channels, rq, r);                                               \
        }                                                                                                    \
        }                                                                                                    \
        free(scratch);                                                                                       \
        return 0;                                                                                            \
    }

#define DENSE_STRIDE(channels) (channels)
CSR_SUM(csr_sum_int8, int8_t, accumulate_int8_i64, DENSE_STRIDE)
CSR_SUM(csr_sum_int16, int16_t, accumulate_int16_i64, DENSE_STRIDE)
CSR_SUM(csr_sum_int32, int32_t, accumulate_int32_i64, DENSE_STRIDE)


#define ELEMENT_BLOCK 4096 /* elements a thread takes at a time */
#define SERIAL_BELOW 65536 /* tensors smaller than this take one thread: waking a second costs more */

/* One pass over rows x channels of IN, writing CODE = clamp(STEP(x, s, z), qmin, qmax) with per-tensor or
 * per-channel (last dim) s and z. Returns whether any input was NaN or infinite (BAD(x); never, for int32), found
 * in the same pass: a dense input layer then reads its features once, not a second time for the signature's
 * NaN/Inf check (1M x 128 features: 9-16 ms a call). */
#define ELEMENTWISE(NAME, IN, CODE, STEP, BAD)                                                               \
    int NAME(const IN *x, const float *scale, const float *zero, int64_t rows, int64_t channels,              \
             int per_channel, float qmin, float qmax, int threads, CODE *out) {                               \
        int bad = 0;                                                                                         \
        if (!per_channel) { /* one grid: blocks of the flat tensor, whatever its rows (7-channel rows: 2x) */ \
            const int64_t n = rows * channels;                                                               \
            const float s = scale[0], z = zero[0];                                                           \
            const int team = n >= SERIAL_BELOW ? threads : 1;                                                \
            _Pragma("omp parallel for num_threads(team) schedule(static) reduction(|: bad)")                 \
            for (int64_t b = 0; b < n; b += ELEMENT_BLOCK) {                                                 \
                const int64_t end = b + ELEMENT_BLOCK < n ? b + ELEMENT_BLOCK : n;                           \
                for (int64_t i = b; i < end; ++i) {                                                          \
                    bad |= BAD(x[i]);                                                                        \
                    out[i] = (CODE)clampf(STEP(x[i], s, z), qmin, qmax);                                     \
                }                                                                                            \
            }                                                                                                \
            return bad;                                                                                      \
        }                                                                                                    \
        _Pragma("omp parallel for num_threads(threads) schedule(static) reduction(|: bad)")                  \
        for (int64_t r = 0; r < rows; ++r) {                                                                 \
            const IN *restrict xr = x + r * channels;                                                        \
            CODE *restrict o = out + r * channels;                                                           \
            for (int64_t c = 0; c < channels; ++c) {                                                         \
                bad |= BAD(xr[c]);                                                                           \
                o[c] = (CODE)clampf(STEP(xr[c], scale[c], zero[c]), qmin, qmax);                             \
            }                                                                                                \
        }                                                                                                    \
        return bad;                                                                                          \
    }

#define NEVER(v) 0

ELEMENTWISE(quantize_int8, float, int8_t, QUANTIZE_STEP, NOT_FINITE)
ELEMENTWISE(quantize_int16, float, int16_t, QUANTIZE_STEP, NOT_FINITE)
ELEMENTWISE(requantize_int8, int32_t, int8_t, REQUANTIZE_STEP, NEVER)
ELEMENTWISE(requantize_int16, int32_t, int16_t, REQUANTIZE_STEP, NEVER)

#if defined(__AVX2__) && !defined(__AVX512F__)
/* compress_lut[m]: the positions of m's set bits, one per byte, lowest first (AVX2 has no compress). */
static uint64_t compress_lut[256];
__attribute__((constructor)) static void fill_compress_lut(void) {
    for (unsigned m = 0; m < 256; ++m) {
        uint64_t packed = 0;
        for (unsigned bit = 0, slot = 0; bit < 8; ++bit)
            if (m >> bit & 1u) packed |= (uint64_t)bit << (8 * slot++);
        compress_lut[m] = packed;
    }
}
#endif

/* Writes the indices k in [0, n) with x[k] != 0.0f (NaN included) to idx, lowest first; returns how many. idx
 * needs 64 slots of slack past n: the vector paths store whole registers. Branch-free: with AVX-512 VBMI2 one byte
 * compress per 64 features; AVX-512F one dword compress per 16 (into a register: the memory form of vpcompressd is
 * microcoded and very slow on AMD Zen 4); AVX2 a table lookup per 8; else scalar. The vector paths prefetch
 * SCAN_AHEAD features (4 kB) ahead, into the next rows: between two rows' scans the kernel multiplies, demand
 * loads stop and so does the hardware's stream prefetcher (Cora's input layer, 2708 x 1433 -> 128, Xeon, one
 * thread: 1003 -> 848 us; two: 567 -> 513 us; prefetching past the end of x is harmless, it never faults). */
#ifndef SCAN_AHEAD
#define SCAN_AHEAD 1024
#endif
static inline int64_t nonzero_indices(const float *x, int64_t n, int32_t *idx) {
    int64_t count = 0, k = 0;
#if defined(__AVX512VBMI2__) && defined(__AVX512BW__)
    const __m512i iota = _mm512_set_epi8(63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45,
                                         44, 43, 42, 41, 40, 39, 38, 37, 36, 35, 34, 33, 32, 31, 30, 29, 28, 27, 26,
                                         25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6,
                                         5, 4, 3, 2, 1, 0);
    const __m512 zero = _mm512_setzero_ps();
    for (; k + 64 <= n; k += 64) {
        for (int j = 0; j < 4; ++j) _mm_prefetch((const char *)(x + k + SCAN_AHEAD + 16 * j), _MM_HINT_T0);
        uint64_t mask = 0;
        for (int j = 0; j < 4; ++j)
            mask |= (uint64_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(x + k + 16 * j), zero, _CMP_NEQ_UQ) << (16 * j);
        const __m512i bytes = _mm512_maskz_compress_epi8((__mmask64)mask, iota);
        const int found = __builtin_popcountll(mask);
        const __m512i base = _mm512_set1_epi32((int32_t)k);
        _mm512_storeu_si512((void *)(idx + count), _mm512_add_epi32(base, _mm512_cvtepu8_epi32(_mm512_castsi512_si128(bytes))));
        for (int j = 1; j < 4 && found > 16 * j; ++j) {
            const __m128i part = _mm512_extracti32x4_epi32(bytes, j);
            _mm512_storeu_si512((void *)(idx + count + 16 * j), _mm512_add_epi32(base, _mm512_cvtepu8_epi32(part)));
        }
        count += found;
    }
#elif defined(__AVX512F__)
    const __m512i step = _mm512_set1_epi32(16);
    __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (; k + 16 <= n; k += 16) {
        _mm_prefetch((const char *)(x + k + SCAN_AHEAD), _MM_HINT_T0);
        const __mmask16 mask = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + k), _mm512_setzero_ps(), _CMP_NEQ_UQ);
        _mm512_storeu_si512((void *)(idx + count), _mm512_maskz_compress_epi32(mask, lanes));
        count += __builtin_popcount((unsigned)mask);
        lanes = _mm512_add_epi32(lanes, step);
    }
#elif defined(__AVX2__)
    const __m256 zero = _mm256_setzero_ps();
    for (; k + 8 <= n; k += 8) {
        _mm_prefetch((const char *)(x + k + SCAN_AHEAD), _MM_HINT_T0);
        const unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + k), zero, _CMP_NEQ_UQ));
        const __m256i at = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)compress_lut[mask]));
        _mm256_storeu_si256((__m256i *)(idx + count), _mm256_add_epi32(at, _mm256_set1_epi32((int32_t)k)));
        count += __builtin_popcount(mask);
    }
#endif
    for (; k < n; ++k) {
        idx[count] = (int32_t)k;
        count += x[k] != 0.0f;
    }
    return count;
}

/* The non-zero features (NaN included, as torch.count_nonzero counts them) of `samples` rows, `step` rows apart:
 * the input layer's sparse-or-dense decision, ~1 us where ATen's strided count took 15. */
int64_t count_nonzero_rows(const float *x, int64_t in, int64_t step, int64_t samples) {
    int64_t count = 0;
    for (int64_t s = 0; s < samples; ++s) {
        const float *restrict row = x + s * step * in;
        int32_t found = 0;
        for (int64_t k = 0; k < in; ++k) found += row[k] != 0.0f;
        count += found;
    }
    return count;
}

/* w_offset: what every stored weight code is short of its value (0, or qmin of packed codes); STRIDE: a weight
 * row's length in WEIGHT units for the given output features */
#define QUANTIZE_LINEAR(NAME, WEIGHT, ACCUMULATE, STRIDE)                                                              \
    int NAME(const float *x, float scale, float zero, float qmin, float qmax, const WEIGHT *w_t,               \
             int32_t w_offset, const int32_t *bias, int64_t rows, int64_t in, int64_t out_features, int threads, \
             int32_t *out, const requant_t *rq) {                                                             \
        const int skip_zeros = clampf(QUANTIZE_STEP(0.0f, scale, zero), qmin, qmax) == zero;                  \
        const size_t slots = (size_t)(in > 0 ? in : 1) + 64; /* + the vector stores' slack */              \
        /* per thread: nonzero indices and their centered codes, and the int32 row of the epilogue */         \
        const size_t stride = (2 * padded_slots(slots) + (rq ? padded_slots((size_t)out_features) : 0)) * 4;     \
        char *scratch = (char *)aligned_alloc(64, (size_t)(threads > 0 ? threads : 1) * stride);              \
        if (!scratch) return 3;                                                                              \
        int nonfinite = 0;                                                                                   \
        _Pragma("omp parallel num_threads(threads)")                                                         \
        {                                                                                                    \
            int thread = 0;                                                                                  \
            THREAD_NUM(thread);                                                                             \
            int32_t *idx = (int32_t *)(scratch + (size_t)thread * stride);                                   \
            int32_t *d = idx + padded_slots(slots), *row = d + padded_slots(slots);                          \
            _Pragma("omp for schedule(static) reduction(|:nonfinite)")                                       \
            for (int64_t r = 0; r < rows; ++r) {                                                             \
                const float *restrict xr = x + r * in;                                                       \
                int32_t *restrict acc = rq ? row : out + r * out_features;                                   \
                int64_t count = in;                                                                          \
                if (skip_zeros)                                                                              \
                    count = nonzero_indices(xr, in, idx);                                                    \
                else                                                                                         \
                    for (int64_t k = 0; k < in; ++k) idx[k] = (int32_t)k;                                    \
                int bad = 0;                                                                                 \
                for (int64_t i = 0; i < count; ++i) {                                                        \
                    const float v = xr[idx[i]];                                                              \
                    bad |= NOT_FINITE(v);                                                                    \
                    d[i] = (int32_t)clampf(QUANTIZE_STEP(v, scale, zero), qmin, qmax) - (int32_t)zero;       \
                }                                                                                            \
                nonfinite |= bad;                                                                            \
                uint32_t dsum = 0;                                                                           \
                if (w_offset)                                                                                \
                    for (int64_t i = 0; i < count; ++i) dsum += (uint32_t)d[i];                              \
                ACCUMULATE(acc, bias, 1u, dsum * (uint32_t)w_offset, w_t, STRIDE(out_features), out_features, idx, \
                           d, count);                                                                        \
                if (rq) epilogue_row(acc, NULL, out_features, rq, r);                                       \
            }                                                                                                \
        }                                                                                                    \
        free(scratch);                                                                                       \
        return nonfinite ? 4 : 0;                                                                            \
    }

QUANTIZE_LINEAR(quantize_linear_int8, int8_t, accumulate_int8_i32, DENSE_STRIDE)
QUANTIZE_LINEAR(quantize_linear_int16, int16_t, accumulate_int16_i32, DENSE_STRIDE)

/* ---- packed sub-byte codes ---------------------------------------------------------------------------------
 * A table of b-bit codes (b = 2 or 4) is stored packed, 8 / b codes a byte, as u = q - qmin in [0, 2^b): a row is
 * cut into blocks of 16 bytes holding 16 * (8 / b) channels each; channel p of a block sits in byte p % 16 at bit
 * (p / 16) * b. A row takes packed_stride(C, b) bytes (whole blocks; the padding codes are 0). This layout unpacks
 * with one 16-byte load and, per 16 channels, one shift and one mask: no shuffles. A gathered row of C codes then
 * reads C * b / 8 bytes instead of C: random gathers over a table far larger than the caches fetch 2x (4 bits)
 * or 4x (2 bits) fewer cache lines, which is what the aggregation of a big graph waits for.
 * Sums of packed codes: sum_i d_i (u_i + qmin - z) = sum_i d_i u_i + (qmin - z) sum_i d_i, so the kernels take
 * base = z - qmin where the unpacked ones take z (csr_sum), or the offset qmin sum_i d_i (quantize_linear). */
#define PACKED_BLOCK_CHANNELS(BITS) (16 * (8 / (BITS)))
#define PACKED_STRIDE_2(channels) (((channels) + 63) / 64 * 16)
#define PACKED_STRIDE_4(channels) (((channels) + 31) / 32 * 16)

int64_t packed_stride(int64_t channels, int bits) {
    return bits == 2 ? PACKED_STRIDE_2(channels) : PACKED_STRIDE_4(channels);
}

static inline uint32_t packed_code(const uint8_t *row, int64_t n, int bits) {
    const int64_t p = n % PACKED_BLOCK_CHANNELS(bits);
    return (uint32_t)(row[n / PACKED_BLOCK_CHANNELS(bits) * 16 + p % 16] >> (p / 16 * bits)) & ((1u << bits) - 1u);
}

/* codes [rows, channels] in [qmin, qmin + 2^bits) -> packed [rows, packed_stride(channels, bits)]. Whole blocks
 * are built 16 bytes at a time from 8 / BITS runs of 16 codes (a loop the compiler vectorizes); a row's last,
 * partial block takes the per-channel loop. */
#define PACK_ROWS(NAME, BITS)                                                                                \
    static void NAME(const int8_t *codes, int64_t rows, int64_t channels, int32_t qmin, int threads, uint8_t *out) { \
        const int64_t stride = packed_stride(channels, BITS), block = PACKED_BLOCK_CHANNELS(BITS);          \
        const int64_t whole = channels / block;                                                              \
        const uint8_t mask = (uint8_t)((1u << (BITS)) - 1u), offset = (uint8_t)qmin;                        \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                    \
        for (int64_t r = 0; r < rows; ++r) {                                                                 \
            const int8_t *restrict q = codes + r * channels;                                                 \
            uint8_t *restrict o = out + r * stride;                                                          \
            for (int64_t b = 0; b < whole; ++b)                                                              \
                for (int p = 0; p < 16; ++p) {                                                               \
                    uint8_t v = 0;                                                                           \
                    for (int slot = 0; slot < 8 / (BITS); ++slot)                                            \
                        v |= (uint8_t)(((uint8_t)q[b * block + slot * 16 + p] - offset) & mask) << (slot * (BITS)); \
                    o[b * 16 + p] = v;                                                                       \
                }                                                                                            \
            if (whole * block < channels) {                                                                  \
                memset(o + whole * 16, 0, 16);                                                               \
                for (int64_t c = whole * block; c < channels; ++c) {                                         \
                    const int64_t p = c % block;                                                             \
                    o[whole * 16 + p % 16] |= (uint8_t)(((uint8_t)q[c] - offset) & mask) << (p / 16 * (BITS)); \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }

PACK_ROWS(pack_rows2, 2)
PACK_ROWS(pack_rows4, 4)

void pack_codes(const int8_t *codes, int64_t rows, int64_t channels, int bits, int32_t qmin, int threads,
                uint8_t *out) {
    (bits == 2 ? pack_rows2 : pack_rows4)(codes, rows, channels, qmin, threads, out);
}

/* acc[n] = k * base[n] + off + sum_i d[i] * u(w + idx[i] * stride, n), as ACCUMULATE_ROWS, for channels [n0, out) */
#define ACCUMULATE_PACKED_GENERIC(NAME, INDEX, BITS)                                                         \
    static inline void NAME(int32_t *restrict acc, const int32_t *base, uint32_t k, uint32_t off,              \
                            const uint8_t *restrict w, int64_t stride, int64_t n0, int64_t out,               \
                            const INDEX *idx, const int32_t *d, int64_t count) {                             \
        for (int64_t n = n0; n < out; ++n) acc[n] = (int32_t)((base ? k * (uint32_t)base[n] : 0u) + off);     \
        for (int64_t i = 0; i < count; ++i) {                                                                \
            const uint32_t di = d ? (uint32_t)d[i] : 1u;                                                     \
            const uint8_t *restrict row = w + (int64_t)idx[i] * stride;                                      \
            for (int64_t n = n0; n < out; ++n) acc[n] = (int32_t)((uint32_t)acc[n] + di * packed_code(row, n, BITS)); \
        }                                                                                                    \
    }

/* 16 codes of group j (channels 16 j ..) of packed blocks starting at `blocks`, as bytes: one load, a shift, a
 * mask. Tiles start at multiples of 64 channels, a whole number of blocks, so j is a compile-time constant. */
#define PACKED_GROUP(blocks, j, BITS)                                                                        \
    _mm_and_si128(_mm_srli_epi16(_mm_loadu_si128((const __m128i *)((blocks) + (j) / (8 / (BITS)) * 16)),     \
                                 (j) % (8 / (BITS)) * (BITS)),                                               \
                  _mm_set1_epi8((char)((1 << (BITS)) - 1)))

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
/* channels 32 j .. 32 j + 31 of packed blocks as 32 int16 codes: groups 2 j and 2 j + 1, in one block (a block holds
 * 2 or 4 groups); codes past the row's channels are the block's zero padding */
#define WIDEN32_PACKED(row, j, BITS)                                                                          \
    _mm512_cvtepu8_epi16(_mm256_set_m128i(PACKED_GROUP(row, 2 * (j) + 1, BITS), PACKED_GROUP(row, 2 * (j), BITS)))
#define WIDEN32_PACKED2(row, j, m) ((void)(m), WIDEN32_PACKED(row, j, 2))
#define WIDEN32_PACKED4(row, j, m) ((void)(m), WIDEN32_PACKED(row, j, 4))
/* up to 256 outputs (16 groups of 16) in NV zmm registers, the last one masked; unweighted sums skip the product;
 * weights that fit int16 take two terms per multiply (PAIR_TILE_512) */
#define ACCUMULATE_PACKED(NAME, INDEX, BITS)                                                                 \
    ACCUMULATE_PACKED_GENERIC(NAME##_generic, INDEX, BITS)                                                   \
    static inline __attribute__((always_inline)) void NAME##_tile(                                          \
        int32_t *acc, const int32_t *base, uint32_t k, uint32_t off, const uint8_t *w, int64_t stride,       \
        const INDEX *idx, const int32_t *d, int64_t count, const __mmask16 tail, const int nv) {             \
        __m512i a[16];                                                                                       \
        ACC_INIT_512(a, base, k, off, tail, nv);                                                             \
        for (int64_t i = 0; i < count; ++i) {                                                                \
            const uint8_t *row = w + (int64_t)idx[i] * stride;                                               \
            const __m512i di = _mm512_set1_epi32(d ? d[i] : 1);                                              \
            for (int j = 0; j < nv; ++j) {                                                                   \
                const __m512i codes = _mm512_cvtepu8_epi32(PACKED_GROUP(row, j, BITS));                      \
                a[j] = _mm512_add_epi32(a[j], d ? _mm512_mullo_epi32(codes, di) : codes);                   \
            }                                                                                                \
        }                                                                                                    \
        for (int j = 0; j < nv; ++j) _mm512_mask_storeu_epi32(acc + 16 * j, j == nv - 1 ? tail : 0xFFFF, a[j]); \
    }                                                                                                        \
    PAIR_TILE_512(NAME##_pair_tile, uint8_t, INDEX, WIDEN32_PACKED##BITS)                                    \
    TILES_512(NAME, uint8_t, INDEX, BITS)
#elif defined(__AVX2__)
/* up to 64 outputs (8 half-groups of 8) in NV ymm registers; channels past the last multiple of 8: generic loop */
#define ACCUMULATE_PACKED(NAME, INDEX, BITS)                                                                 \
    ACCUMULATE_PACKED_GENERIC(NAME##_generic, INDEX, BITS)                                                   \
    static inline __attribute__((always_inline)) void NAME##_tile(                                          \
        int32_t *acc, const int32_t *base, uint32_t k, uint32_t off, const uint8_t *w, int64_t stride,       \
        const INDEX *idx, const int32_t *d, int64_t count, const int nv) {                                   \
        __m256i a[8];                                                                                        \
        ACC_INIT_256(a, base, k, off, nv);                                                                   \
        for (int64_t i = 0; i < count; ++i) {                                                                \
            const uint8_t *row = w + (int64_t)idx[i] * stride;                                               \
            const __m256i di = _mm256_set1_epi32(d ? d[i] : 1);                                              \
            for (int j = 0; j < nv; ++j) {                                                                   \
                const __m128i group = PACKED_GROUP(row, j / 2, BITS);                                        \
                const __m256i codes = _mm256_cvtepu8_epi32(j % 2 ? _mm_srli_si128(group, 8) : group);        \
                a[j] = _mm256_add_epi32(a[j], d ? _mm256_mullo_epi32(codes, di) : codes);                   \
            }                                                                                                \
        }                                                                                                    \
        for (int j = 0; j < nv; ++j) _mm256_storeu_si256((__m256i *)(acc + 8 * j), a[j]);                    \
    }                                                                                                        \
    static inline void NAME(int32_t *acc, const int32_t *base, uint32_t k, uint32_t off, const uint8_t *w,     \
                            int64_t stride, int64_t out, const INDEX *idx, const int32_t *d, int64_t count) { \
        const int64_t full = out / 8 * 8;                                                                    \
        for (int64_t n0 = 0; n0 < full; n0 += 64) {                                                          \
            const int64_t vectors = (full - n0 < 64 ? full - n0 : 64) / 8;                                   \
            TILE_SWITCH(NAME##_tile, acc + n0, base ? base + n0 : NULL, k, off, w + n0 * (BITS) / 8, stride, idx, \
                        d, count)                                                                            \
        }                                                                                                    \
        NAME##_generic(acc, base, k, off, w, stride, full, out, idx, d, count);                              \
    }
#else
#define ACCUMULATE_PACKED(NAME, INDEX, BITS)                                                                 \
    ACCUMULATE_PACKED_GENERIC(NAME##_generic, INDEX, BITS)                                                   \
    static inline void NAME(int32_t *acc, const int32_t *base, uint32_t k, uint32_t off, const uint8_t *w,     \
                            int64_t stride, int64_t out, const INDEX *idx, const int32_t *d, int64_t count) { \
        NAME##_generic(acc, base, k, off, w, stride, 0, out, idx, d, count);                                 \
    }
#endif

ACCUMULATE_PACKED(accumulate_packed2_i64, int64_t, 2)
ACCUMULATE_PACKED(accumulate_packed4_i64, int64_t, 4)
ACCUMULATE_PACKED(accumulate_packed2_i32, int32_t, 2)
ACCUMULATE_PACKED(accumulate_packed4_i32, int32_t, 4)

CSR_SUM(csr_sum_packed2, uint8_t, accumulate_packed2_i64, PACKED_STRIDE_2)
CSR_SUM(csr_sum_packed4, uint8_t, accumulate_packed4_i64, PACKED_STRIDE_4)
QUANTIZE_LINEAR(quantize_linear_packed2, uint8_t, accumulate_packed2_i32, PACKED_STRIDE_2)
QUANTIZE_LINEAR(quantize_linear_packed4, uint8_t, accumulate_packed4_i32, PACKED_STRIDE_4)

/* ---- int16-pair int8 GEMM (AVX2) ---------------------------------------------------------------------------
 * gemm_s8_pairs: what gemm_s8_amx computes, for CPUs without VNNI (AVX2; AVX-512 without VNNI). There ATen's int8
 * GEMM is ~35x slower than FP32, and the exact FP32 path of ops/linear.py converts every code to float first and
 * runs skinny GEMMs badly (2708 x 128 x 7 with requantize: 257 us; 100k x 256 x 16: 39 ms). vpmaddwd multiplies
 * int16 pairs and adds each pair into an int32 lane without saturating (int8 codes widened to int16: a pair sums to
 * at most 2 * 128 * 128 = 2^15 in magnitude), and int32 adds wrap, so the sums are the reference's integers in any
 * order. b is laid out once per call as k / 2 rows of n (padded to a vector) int32 words, each the int16 pair
 * (b[2p][j], b[2p + 1][j]); each block of 4 rows of a is widened to int16 in per-thread scratch, and each 32-bit
 * pair of a row is broadcast against a vector of columns of b: 4 rows x 2 vectors of int32 sums in 8 registers per
 * step of two k (16 columns in ymm registers; with AVX-512BW 32 in zmm: 100k x 128 x 256 28.3 -> 20.1 ms). Finished
 * rows get the offset and the epilogue, as the AMX kernel's. Returns 6 in builds without AVX2 (the caller then
 * takes the FP32 path), 3 when scratch cannot be allocated. */
#if defined(__AVX2__)
/* one vector of int32 sums: 16 lanes with AVX-512BW (zmm), else 8 (ymm) */
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define PAIR_LANES 16
typedef __m512i pair_vec;
#define PAIR_ZERO() _mm512_setzero_si512()
#define PAIR_LOAD(p) _mm512_loadu_si512((const void *)(p))
#define PAIR_STORE(p, v) _mm512_storeu_si512((void *)(p), (v))
#define PAIR_SET1(w) _mm512_set1_epi32(w)
#define PAIR_DOT(acc, a, b) _mm512_add_epi32((acc), _mm512_madd_epi16((a), (b)))
#else
#define PAIR_LANES 8
typedef __m256i pair_vec;
#define PAIR_ZERO() _mm256_setzero_si256()
#define PAIR_LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define PAIR_STORE(p, v) _mm256_storeu_si256((__m256i *)(p), (v))
#define PAIR_SET1(w) _mm256_set1_epi32(w)
#if defined(__AVXVNNI__)
#define PAIR_DOT(acc, a, b) _mm256_dpwssd_avx_epi32((acc), (a), (b))
#else
#define PAIR_DOT(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
#endif
#endif
#define PAIR_ROWS 4
static inline size_t whole_lines(size_t bytes) { return (bytes + 63) / 64 * 64; }

/* c[i, j0 .. j0 + tiles * PAIR_LANES) = sum over pairs p of a16[i, 2p .. 2p + 1] . bp[p, j0 ..], for `rows` rows */
static inline __attribute__((always_inline)) void pair_block(const int16_t *a16, int64_t a_stride, const int rows,
                                                             const int32_t *bp, int64_t width, int64_t pairs,
                                                             int64_t j0, const int tiles, int32_t *c) {
    pair_vec acc[PAIR_ROWS][2];
    for (int i = 0; i < rows; ++i)
        for (int t = 0; t < tiles; ++t) acc[i][t] = PAIR_ZERO();
    for (int64_t p = 0; p < pairs; ++p) {
        const int32_t *row_b = bp + p * width + j0;
        const pair_vec b0 = PAIR_LOAD(row_b);
        const pair_vec b1 = tiles > 1 ? PAIR_LOAD(row_b + PAIR_LANES) : b0;
        for (int i = 0; i < rows; ++i) {
            int32_t word;
            memcpy(&word, a16 + i * a_stride + 2 * p, sizeof word);
            const pair_vec pair = PAIR_SET1(word);
            acc[i][0] = PAIR_DOT(acc[i][0], pair, b0);
            if (tiles > 1) acc[i][1] = PAIR_DOT(acc[i][1], pair, b1);
        }
    }
    for (int i = 0; i < rows; ++i)
        for (int t = 0; t < tiles; ++t) PAIR_STORE(c + i * width + j0 + PAIR_LANES * t, acc[i][t]);
}

int gemm_s8_pairs(const int8_t *a, int64_t m, int64_t k, int64_t lda, const int8_t *b, int64_t n,
                  const int32_t *offset, int threads, int32_t *out, const requant_t *rq) {
    const int64_t pairs = (k + 1) / 2, width = (n + PAIR_LANES - 1) / PAIR_LANES * PAIR_LANES, a_stride = 2 * pairs;
    const size_t a_bytes = whole_lines((size_t)(PAIR_ROWS * a_stride * 2)), c_bytes = whole_lines((size_t)(PAIR_ROWS * width * 4));
    const int team = threads > 0 ? threads : 1;
    int32_t *bp = (int32_t *)aligned_alloc(64, whole_lines((size_t)(pairs * width * 4)));
    char *scratch = (char *)aligned_alloc(64, (size_t)team * (a_bytes + c_bytes));
    if (!bp || !scratch) {
        free(bp);
        free(scratch);
        return 3;
    }
    for (int64_t p = 0; p < pairs; ++p)
        for (int64_t j = 0; j < width; ++j)
            bp[p * width + j] = j < n ? int16_pair(b[2 * p * n + j], 2 * p + 1 < k ? b[(2 * p + 1) * n + j] : 0) : 0;
    _Pragma("omp parallel num_threads(team)") {
        int thread = 0;
        THREAD_NUM(thread);
        int16_t *a16 = (int16_t *)(scratch + (size_t)thread * (a_bytes + c_bytes));
        int32_t *c = (int32_t *)((char *)a16 + a_bytes);
        _Pragma("omp for schedule(static)")
        for (int64_t r0 = 0; r0 < m; r0 += PAIR_ROWS) {
            const int rows = m - r0 < PAIR_ROWS ? (int)(m - r0) : PAIR_ROWS;
            for (int i = 0; i < rows; ++i) {
                const int8_t *row = a + (r0 + i) * lda;
                int16_t *wide = a16 + i * a_stride;
                for (int64_t q = 0; q < k; ++q) wide[q] = row[q];
                if (k % 2) wide[k] = 0;
            }
            for (int64_t j0 = 0; j0 < width; j0 += 2 * PAIR_LANES) {
                const int tiles = width - j0 >= 2 * PAIR_LANES ? 2 : 1;
                if (rows == PAIR_ROWS && tiles == 2)
                    pair_block(a16, a_stride, PAIR_ROWS, bp, width, pairs, j0, 2, c);
                else if (rows == PAIR_ROWS)
                    pair_block(a16, a_stride, PAIR_ROWS, bp, width, pairs, j0, 1, c);
                else
                    pair_block(a16, a_stride, rows, bp, width, pairs, j0, tiles, c);
            }
            for (int i = 0; i < rows; ++i) {
                const int32_t *sums = c + i * width;
                if (rq) {
                    epilogue_row(sums, offset, n, rq, r0 + i);
                    continue;
                }
                int32_t *acc = out + (r0 + i) * n;
                for (int64_t j = 0; j < n; ++j) acc[j] = (int32_t)((uint32_t)sums[j] + (uint32_t)offset[j]);
            }
        }
    }
    free(bp);
    free(scratch);
    return 0;
}
#else
int gemm_s8_pairs(const int8_t *a, int64_t m, int64_t k, int64_t lda, const int8_t *b, int64_t n,
                  const int32_t *offset, int threads, int32_t *out, const requant_t *rq) {
    (void)a, (void)m, (void)k, (void)lda, (void)b, (void)n, (void)offset, (void)threads, (void)out, (void)rq;
    return 6;
}
#endif

/* ---- AMX int8 GEMM -----------------------------------------------------------------------------------------
 * gemm_s8_amx: out = a @ b + offset in int32 (wrap-around) for int8 a [m, k] (row stride lda) and b [k, n], or its
 * requantized int8 codes (rq): mixq::linear_int on CPUs with AMX-INT8 (Sapphire Rapids and later), whose tile
 * dot product TDPBSSD multiplies 16 x 64 by 64 x 16 int8 tiles into int32 tiles without saturation, so the sums
 * are the reference's integers in any order. oneDNN's int8 GEMM behind torch._int_mm runs AVX-512 VNNI on these
 * CPUs (~310 GMAC/s on two cores of the Xeon here, 1M x 128 x 256); tiles do 4x the work per instruction.
 * Blocks of 32 rows x 32 columns: four accumulator tiles, two tiles of a, two of b, per 64-deep step of k. b is
 * laid out once per call in the tiles' format (k / 4 rows of n groups of 4 bytes, zero padded to 64 x 32 multiples);
 * a block of a with fewer than 32 rows or k not a multiple of 64 is copied into zero-padded scratch first.
 * Each finished block gets the offset (bias - zero-point terms) and, with rq, the requantize epilogue, while in
 * cache. Linux grants a process the AMX state on request (arch_prctl); returns 5 where it does not, or where
 * this build has no AMX code (the caller then takes the VNNI path), 3 when scratch cannot be allocated. */
#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512F__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define AMX_ROWS 32
#define AMX_COLS 32
#define AMX_DEPTH 64

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed, aligned(64))) tile_config_t;

static int amx_permission = -1; /* -1: not asked yet; the answer is the same for every thread of the process */

int amx_available(void) {
    if (amx_permission < 0) amx_permission = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    return amx_permission;
}

int gemm_s8_amx(const int8_t *a, int64_t m, int64_t k, int64_t lda, const int8_t *b, int64_t n,
                const int32_t *offset, int threads, int32_t *out, const requant_t *rq) {
    if (!amx_available()) return 5;
    const int64_t depth = (k + AMX_DEPTH - 1) / AMX_DEPTH * AMX_DEPTH, width = (n + AMX_COLS - 1) / AMX_COLS * AMX_COLS;
    const int64_t b_stride = width * 4; /* bytes of one row of the laid-out b: n groups of 4 consecutive k */
    int8_t *tiles_b = (int8_t *)aligned_alloc(64, (size_t)(depth / 4 * b_stride));
    const size_t a_bytes = (size_t)(AMX_ROWS * depth), c_bytes = (size_t)(AMX_ROWS * width * 4);
    const int team = threads > 0 ? threads : 1;
    char *scratch = (char *)aligned_alloc(64, (size_t)team * (a_bytes + c_bytes));
    if (!tiles_b || !scratch) {
        free(tiles_b);
        free(scratch);
        return 3;
    }
    memset(tiles_b, 0, (size_t)(depth / 4 * b_stride));
    for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t j = 0; j < n; ++j) tiles_b[kk / 4 * b_stride + j * 4 + kk % 4] = b[kk * n + j];
    const int direct_depth = depth == k;
    _Pragma("omp parallel num_threads(team)") {
        int thread = 0;
        THREAD_NUM(thread);
        int8_t *block_a = (int8_t *)(scratch + (size_t)thread * (a_bytes + c_bytes));
        int32_t *block_c = (int32_t *)(block_a + a_bytes);
        tile_config_t config;
        memset(&config, 0, sizeof config);
        config.palette = 1;
        for (int t = 0; t < 8; ++t) config.rows[t] = 16, config.colsb[t] = 64;
        _tile_loadconfig(&config);
        _Pragma("omp for schedule(static)")
        for (int64_t r0 = 0; r0 < m; r0 += AMX_ROWS) {
            const int64_t rows = m - r0 < AMX_ROWS ? m - r0 : AMX_ROWS;
            const int8_t *rows_a = a + r0 * lda;
            int64_t stride = lda;
            if (rows < AMX_ROWS || !direct_depth) {
                memset(block_a, 0, a_bytes);
                for (int64_t i = 0; i < rows; ++i) memcpy(block_a + i * depth, a + (r0 + i) * lda, (size_t)k);
                rows_a = block_a, stride = depth;
            }
            for (int64_t j0 = 0; j0 < width; j0 += AMX_COLS) {
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (int64_t d0 = 0; d0 < depth; d0 += AMX_DEPTH) {
                    _tile_loadd(4, rows_a + d0, stride);
                    _tile_loadd(5, rows_a + 16 * stride + d0, stride);
                    _tile_loadd(6, tiles_b + d0 / 4 * b_stride + j0 * 4, b_stride);
                    _tile_loadd(7, tiles_b + d0 / 4 * b_stride + (j0 + 16) * 4, b_stride);
                    _tile_dpbssd(0, 4, 6);
                    _tile_dpbssd(1, 4, 7);
                    _tile_dpbssd(2, 5, 6);
                    _tile_dpbssd(3, 5, 7);
                }
                _tile_stored(0, block_c + j0, width * 4);
                _tile_stored(1, block_c + j0 + 16, width * 4);
                _tile_stored(2, block_c + 16 * width + j0, width * 4);
                _tile_stored(3, block_c + 16 * width + j0 + 16, width * 4);
            }
            for (int64_t i = 0; i < rows; ++i) {
                const int32_t *sums = block_c + i * width;
                if (rq) { /* the offset added as the row is read: a store of it first would stall the reads */
                    epilogue_row(sums, offset, n, rq, r0 + i);
                    continue;
                }
                int32_t *acc = out + (r0 + i) * n;
                for (int64_t j = 0; j < n; ++j) acc[j] = (int32_t)((uint32_t)sums[j] + (uint32_t)offset[j]);
            }
        }
        _tile_release();
    }
    free(tiles_b);
    free(scratch);
    return 0;
}
#else
int amx_available(void) { return 0; }

int gemm_s8_amx(const int8_t *a, int64_t m, int64_t k, int64_t lda, const int8_t *b, int64_t n,
                const int32_t *offset, int threads, int32_t *out, const requant_t *rq) {
    (void)a, (void)m, (void)k, (void)lda, (void)b, (void)n, (void)offset, (void)threads, (void)out, (void)rq;
    return 5;
}
#endif

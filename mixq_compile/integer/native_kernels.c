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
 * features are gathered first (one vector compare + compress per 16 features on AVX-512, no branches) and only
 * those are quantized and multiplied: sparse node features (bag-of-words, one-hot) cost about one read of x.
 * Returns 0, or 3 if the per-thread scratch cannot be allocated.
 *
 * quantize_<code>: float32 -> codes for mixq::quantize, clamp(round_half_even(x / scale + zero), qmin, qmax) with
 * the same two IEEE roundings (a true division, then an addition; built without fast-math or FMA contraction) as
 * the integer program's quantize instruction, so the codes are bit-identical; one pass over x, no temporaries.
 */
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <string.h>
#if defined(_OPENMP)
#include <omp.h>
#endif

static int row_pointers(const int64_t *dst, int64_t edges, int64_t rows, int64_t *rowptr) {
    int64_t e = 0;
    for (int64_t r = 0; r < rows; ++r) {
        rowptr[r] = e;
        while (e < edges && dst[e] == r) ++e;
        if (e < edges && (dst[e] < r || dst[e] >= rows)) return 1;
    }
    rowptr[rows] = e;
    return e == edges ? 0 : 1;
}

static int check_sources(const int64_t *src, int64_t edges, int64_t nodes) {
    for (int64_t e = 0; e < edges; ++e)
        if (src[e] < 0 || src[e] >= nodes) return 2;
    return 0;
}

#define CSR_SUM(NAME, CODE)                                                                                  \
    int NAME(const int64_t *dst, const int64_t *src, const int32_t *weight, const CODE *table,               \
             const int32_t *zero, int64_t edges, int64_t nodes, int64_t rows, int64_t channels, int threads,  \
             int32_t *out) {                                                                                  \
        int64_t *rowptr = (int64_t *)malloc((size_t)(rows + 1) * sizeof(int64_t));                          \
        if (!rowptr) return 3;                                                                               \
        int status = row_pointers(dst, edges, rows, rowptr);                                                  \
        if (!status) status = check_sources(src, edges, nodes);                                              \
        if (status) {                                                                                        \
            free(rowptr);                                                                                    \
            return status;                                                                                   \
        }                                                                                                    \
        _Pragma("omp parallel for num_threads(threads) schedule(dynamic, 64)")                               \
        for (int64_t r = 0; r < rows; ++r) {                                                                 \
            uint32_t *restrict acc = (uint32_t *)(out + r * channels);                                       \
            uint32_t wsum = 0;                                                                               \
            memset(acc, 0, (size_t)channels * sizeof(uint32_t));                                            \
            for (int64_t e = rowptr[r]; e < rowptr[r + 1]; ++e) {                                            \
                const uint32_t w = weight ? (uint32_t)weight[e] : 1u;                                        \
                const CODE *restrict q = table + src[e] * channels;                                          \
                wsum += w;                                                                                   \
                for (int64_t c = 0; c < channels; ++c) acc[c] += w * (uint32_t)(int32_t)q[c];                \
            }                                                                                                \
            for (int64_t c = 0; c < channels; ++c) acc[c] -= wsum * (uint32_t)zero[c];                       \
        }                                                                                                    \
        free(rowptr);                                                                                        \
        return 0;                                                                                            \
    }

CSR_SUM(csr_sum_int8, int8_t)
CSR_SUM(csr_sum_int16, int16_t)
CSR_SUM(csr_sum_int32, int32_t)

#if defined(_OPENMP)
#define THREAD_NUM(var) (var) = omp_get_thread_num()
#else
#define THREAD_NUM(var) (void)(var)
#endif

static inline float clampf(float v, float lo, float hi) {
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

#define QUANTIZE(NAME, CODE)                                                                                 \
    void NAME(const float *x, const float *scale, const float *zero, int64_t rows, int64_t channels,          \
              int per_channel, float qmin, float qmax, int threads, CODE *out) {                              \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                    \
        for (int64_t r = 0; r < rows; ++r) {                                                                 \
            const float *restrict xr = x + r * channels;                                                     \
            CODE *restrict o = out + r * channels;                                                           \
            if (per_channel) {                                                                               \
                for (int64_t c = 0; c < channels; ++c)                                                       \
                    o[c] = (CODE)clampf(rintf(xr[c] / scale[c] + zero[c]), qmin, qmax);                   \
            } else {                                                                                         \
                const float s = scale[0], z = zero[0];                                                       \
                for (int64_t c = 0; c < channels; ++c) o[c] = (CODE)clampf(rintf(xr[c] / s + z), qmin, qmax);      \
            }                                                                                                \
        }                                                                                                    \
    }

QUANTIZE(quantize_int8, int8_t)
QUANTIZE(quantize_int16, int16_t)

/* Writes the indices k in [0, n) with x[k] != 0.0f to idx and those x[k] to val (branch-free on AVX-512);
 * returns how many. idx and val need 16 slots of slack past n: the AVX-512 path compresses into a register and
 * stores all 16 lanes, because the memory form of vpcompressd is microcoded and very slow on AMD Zen 4 (measured:
 * the Cora input layer 3x slower than the AVX2 build's scalar loop). */
static inline int64_t nonzeros(const float *x, int64_t n, int32_t *idx, float *val) {
    int64_t count = 0, k = 0;
#if defined(__AVX512F__)
    const __m512i step = _mm512_set1_epi32(16);
    __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (; k + 16 <= n; k += 16) {
        const __mmask16 mask = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + k), _mm512_setzero_ps(), _CMP_NEQ_UQ);
        _mm512_storeu_si512((void *)(idx + count), _mm512_maskz_compress_epi32(mask, lanes));
        _mm512_storeu_ps(val + count, _mm512_maskz_compress_ps(mask, _mm512_loadu_ps(x + k)));
        count += __builtin_popcount((unsigned)mask);
        lanes = _mm512_add_epi32(lanes, step);
    }
#endif
    for (; k < n; ++k) {
        idx[count] = (int32_t)k;
        val[count] = x[k];
        count += x[k] != 0.0f;
    }
    return count;
}

#define QUANTIZE_LINEAR(NAME, WEIGHT)                                                                        \
    int NAME(const float *x, float scale, float zero, float qmin, float qmax, const WEIGHT *w_t,               \
             const int32_t *bias, int64_t rows, int64_t in, int64_t out_features, int threads, int32_t *out) {  \
        const int skip_zeros = clampf(rintf(0.0f / scale + zero), qmin, qmax) == zero;                        \
        const size_t slots = (size_t)(in > 0 ? in : 1) + 16; /* + the compress stores' slack */            \
        /* per thread: nonzero indices, their values, their centered codes */                               \
        char *scratch = (char *)malloc((size_t)(threads > 0 ? threads : 1) * slots * 12);                     \
        if (!scratch) return 3;                                                                              \
        _Pragma("omp parallel num_threads(threads)")                                                         \
        {                                                                                                    \
            int thread = 0;                                                                                  \
            THREAD_NUM(thread);                                                                             \
            int32_t *idx = (int32_t *)(scratch + (size_t)thread * slots * 12);                               \
            float *val = (float *)(idx + slots);                                                             \
            int32_t *d = (int32_t *)(val + slots);                                                           \
            _Pragma("omp for schedule(static)")                                                              \
            for (int64_t r = 0; r < rows; ++r) {                                                             \
                const float *restrict xr = x + r * in;                                                       \
                int32_t *restrict acc = out + r * out_features;                                              \
                for (int64_t n = 0; n < out_features; ++n) acc[n] = bias ? bias[n] : 0;                     \
                int64_t count = in;                                                                          \
                if (skip_zeros)                                                                              \
                    count = nonzeros(xr, in, idx, val);                                                      \
                else                                                                                         \
                    for (int64_t k = 0; k < in; ++k) idx[k] = (int32_t)k, val[k] = xr[k];                    \
                for (int64_t i = 0; i < count; ++i)                                                          \
                    d[i] = (int32_t)clampf(rintf(val[i] / scale + zero), qmin, qmax) - (int32_t)zero;        \
                for (int64_t i = 0; i < count; ++i) {                                                        \
                    const uint32_t di = (uint32_t)d[i];                                                      \
                    const WEIGHT *restrict w = w_t + (int64_t)idx[i] * out_features;                         \
                    for (int64_t n = 0; n < out_features; ++n)                                               \
                        acc[n] = (int32_t)((uint32_t)acc[n] + di * (uint32_t)(int32_t)w[n]);                 \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        free(scratch);                                                                                       \
        return 0;                                                                                            \
    }

QUANTIZE_LINEAR(quantize_linear_int8, int8_t)
QUANTIZE_LINEAR(quantize_linear_int16, int16_t)

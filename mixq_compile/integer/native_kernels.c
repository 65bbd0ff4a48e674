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
 * quantize_<code>: float32 -> codes for mixq::quantize, clamp(round_half_even(x / scale + zero), qmin, qmax) with
 * the same two IEEE roundings (a true division, then an addition; built without fast-math or FMA contraction) as
 * the integer program's quantize instruction, so the codes are bit-identical; one pass over x, no temporaries.
 */
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

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

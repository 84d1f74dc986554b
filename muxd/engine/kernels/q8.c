/* muxd's CPU int8 linear ("q8"): y = x . W^T * scale (+ bias).
 *
 * Why it exists: a batch-1 decode step reads every weight once, so its time
 * is the weights' bytes over the memory bandwidth. PyTorch's int8 CPU kernels
 * read far below bandwidth at batch 1 and oneDNN's bf16 GEMV reaches about
 * half of it; this kernel streams int8 weights (half of bf16's bytes) at
 * nearly the bandwidth `torch.sum` gets.
 *
 * Format:
 *   W     int8 [N, Kp], one scale per output row (symmetric, |q| <= 127),
 *         K zero-padded to Kp, a multiple of 64.
 *   x     quantized here, per row and per block of 64 inputs, to |q| (u8),
 *         a sign bit per input and one fp32 scale per block (symmetric).
 *         Blocks keep an outlier feature from flattening its neighbours.
 * A block's dot product runs in int32 with AVX512-VNNI (vpdpbusd multiplies
 * u8 by s8, so W's bytes are negated where x is negative), then is scaled
 * into an fp32 accumulator. Other CPUs get the same arithmetic in plain C.
 *
 * Threads: the rows of W are split over `threads` OpenMP threads. Built with
 * -fopenmp, this library links libgomp.so.1, which resolves to the copy
 * PyTorch has already loaded: one OpenMP runtime and one thread team.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define Q8_VNNI 1
#else
#define Q8_VNNI 0
#endif

#define QB 64          /* inputs per activation block */
#define ROWS 4         /* weight rows computed together (their bytes are adjacent) */
#define XROWS 4        /* activation rows reusing one load of the weights */
#define PREFETCH 1024  /* bytes ahead of the next weight rows to prefetch */

int q8_has_vnni(void) { return Q8_VNNI; }

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as torch does */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* One activation row -> |q| [Kp], sign bits [Kp/64], scales [Kp/64]. */
static void quantize_row(const void *x, int is_bf16, int K, int Kp, uint8_t *xabs, uint64_t *xsign, float *xscale) {
    for (int b = 0; b < Kp / QB; ++b) {
        float v[QB];
        float amax = 0.f;
        for (int i = 0; i < QB; ++i) {
            int k = b * QB + i;
            float f = 0.f;
            if (k < K) f = is_bf16 ? bf16_to_f32(((const uint16_t *)x)[k]) : ((const float *)x)[k];
            v[i] = f;
            amax = fabsf(f) > amax ? fabsf(f) : amax;
        }
        float scale = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
        uint64_t sign = 0;
        int b_vec = 0;
#if Q8_VNNI
        /* 16 at a time: round half to even (the default MXCSR mode), as nearbyintf does */
        const __m512 vinv = _mm512_set1_ps(inv);
        for (int i = 0; i < QB; i += 16) {
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(v + i), vinv));
            sign |= (uint64_t)_mm512_movepi32_mask(q) << i;
            _mm_storeu_si128((__m128i *)(xabs + b * QB + i), _mm512_cvtepi32_epi8(_mm512_abs_epi32(q)));
        }
        b_vec = QB;
#endif
        for (int i = b_vec; i < QB; ++i) {
            int q = (int)nearbyintf(v[i] * inv); /* ties to even, like torch.round */
            if (q < 0) { sign |= 1ull << i; q = -q; }
            xabs[b * QB + i] = (uint8_t)q;
        }
        xsign[b] = sign;
        xscale[b] = scale;
    }
}

static inline void store(void *y, int y_bf16, long i, float v) {
    if (y_bf16) ((uint16_t *)y)[i] = f32_to_bf16(v);
    else ((float *)y)[i] = v;
}

/* Rows [n0, n0 + nr) of y for activation rows [m0, m0 + mr). */
static void tile(const uint8_t *xabs, const uint64_t *xsign, const float *xscale, int m0, int mr,
                 const int8_t *w, const float *wscale, const float *bias, int N, int Kp, int n0, int nr,
                 void *y, int y_bf16) {
    const int nb = Kp / QB;
#if Q8_VNNI
    if (nr == ROWS) {
        const int8_t *w0 = w + (long)n0 * Kp;
        const __m512i zero = _mm512_setzero_si512();
        __m512 acc[XROWS][ROWS];
        for (int i = 0; i < XROWS; ++i)
            for (int j = 0; j < ROWS; ++j) acc[i][j] = _mm512_setzero_ps();
        for (int b = 0; b < nb; ++b) {
            if (m0 == 0) { /* the next rows' bytes, ROWS cache lines per block */
                const char *next = (const char *)(w0 + ROWS * (long)Kp) + b * ROWS * 64 + PREFETCH;
                for (int j = 0; j < ROWS; ++j) _mm_prefetch(next + 64 * j, _MM_HINT_T0);
            }
            __m512i wv[ROWS];
            for (int j = 0; j < ROWS; ++j) wv[j] = _mm512_loadu_si512(w0 + j * (long)Kp + b * QB);
            for (int i = 0; i < mr; ++i) {
                long m = m0 + i;
                __m512i xv = _mm512_loadu_si512(xabs + m * Kp + b * QB);
                __mmask64 negative = (__mmask64)xsign[m * nb + b];
                __m512 s = _mm512_set1_ps(xscale[m * nb + b]);
                for (int j = 0; j < ROWS; ++j) {
                    __m512i signed_w = _mm512_mask_sub_epi8(wv[j], negative, zero, wv[j]);
                    __m512i dot = _mm512_dpbusd_epi32(zero, xv, signed_w);
                    acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[i][j]);
                }
            }
        }
        for (int i = 0; i < mr; ++i)
            for (int j = 0; j < ROWS; ++j) {
                int n = n0 + j;
                float v = _mm512_reduce_add_ps(acc[i][j]) * wscale[n] + (bias ? bias[n] : 0.f);
                store(y, y_bf16, (long)(m0 + i) * N + n, v);
            }
        return;
    }
#endif
    for (int i = 0; i < mr; ++i) {
        long m = m0 + i;
        for (int j = 0; j < nr; ++j) {
            int n = n0 + j;
            const int8_t *wr = w + (long)n * Kp;
            float total = 0.f;
            for (int b = 0; b < nb; ++b) {
                int32_t dot = 0;
                uint64_t sign = xsign[m * nb + b];
                for (int k = 0; k < QB; ++k) {
                    int32_t q = xabs[m * Kp + b * QB + k];
                    dot += ((sign >> k) & 1u) ? -q * wr[b * QB + k] : q * wr[b * QB + k];
                }
                total += (float)dot * xscale[m * nb + b];
            }
            store(y, y_bf16, m * N + n, total * wscale[n] + (bias ? bias[n] : 0.f));
        }
    }
}

/* y [M, N] (bf16 if y_bf16 else fp32) = x [M, K] (bf16 if x_bf16 else fp32) . W^T.
 * Returns 0, or -1 if scratch memory could not be had. */
int q8_linear(const void *x, int x_bf16, int M, int K, const int8_t *w, const float *wscale, const float *bias,
              int N, int Kp, void *y, int y_bf16, int threads) {
    const int nb = Kp / QB;
    uint8_t *xabs = malloc((size_t)M * Kp);
    uint64_t *xsign = malloc((size_t)M * nb * sizeof(uint64_t));
    float *xscale = malloc((size_t)M * nb * sizeof(float));
    if (!xabs || !xsign || !xscale) {
        free(xabs); free(xsign); free(xscale);
        return -1;
    }
    const size_t x_row = (size_t)K * (x_bf16 ? 2 : 4);
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp for schedule(static)
        for (int m = 0; m < M; ++m)
            quantize_row((const char *)x + m * x_row, x_bf16, K, Kp, xabs + (size_t)m * Kp, xsign + (size_t)m * nb,
                         xscale + (size_t)m * nb);
        #pragma omp for schedule(static)
        for (int n0 = 0; n0 < N; n0 += ROWS)
            for (int m0 = 0; m0 < M; m0 += XROWS)
                tile(xabs, xsign, xscale, m0, M - m0 < XROWS ? M - m0 : XROWS, w, wscale, bias, N, Kp, n0,
                     N - n0 < ROWS ? N - n0 : ROWS, y, y_bf16);
    }
    free(xabs); free(xsign); free(xscale);
    return 0;
}

/* W as bf16 (out_bf16) or fp32 [N, K]: q * scale, rounded as torch rounds.
 * For large batches (prefill), where a BLAS GEMM on the dequantized weights
 * beats this file's GEMV-shaped kernel. */
void q8_dequantize(const int8_t *w, const float *wscale, int N, int K, int Kp, void *out, int out_bf16, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int n = 0; n < N; ++n) {
        const int8_t *row = w + (long)n * Kp;
        const float s = wscale[n];
        int k = 0;
#if Q8_VNNI
        const __m512 vs = _mm512_set1_ps(s);
        for (; k + 16 <= K; k += 16) {
            __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + k)))), vs);
            if (!out_bf16) {
                _mm512_storeu_ps((float *)out + (long)n * K + k, v);
                continue;
            }
#ifdef __AVX512BF16__
            _mm256_storeu_si256((__m256i *)((uint16_t *)out + (long)n * K + k), (__m256i)_mm512_cvtneps_pbh(v));
#else
            float f[16];
            _mm512_storeu_ps(f, v);
            for (int i = 0; i < 16; ++i) ((uint16_t *)out)[(long)n * K + k + i] = f32_to_bf16(f[i]);
#endif
        }
#endif
        for (; k < K; ++k) store(out, out_bf16, (long)n * K + k, (float)row[k] * s);
    }
}

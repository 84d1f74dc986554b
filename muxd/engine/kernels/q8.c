/* muxd's CPU int8 linear ("q8"): y = x . W^T (+ bias).
 *
 * Why it exists: a batch-1 decode step is the weights' read, so its time is
 * the weights' bytes over the memory bandwidth. PyTorch's int8 CPU kernels
 * read far below bandwidth at batch 1 and oneDNN's bf16 GEMV reaches about
 * half of it; this kernel streams int8 weights (a little over half of bf16's
 * bytes) at nearly the bandwidth `torch.sum` gets, by prefetching the next
 * rows ahead of the hardware prefetcher.
 *
 * Format (llama.cpp's Q8_0 for both sides, blocks of 32):
 *   W     int8 [N, Kp], symmetric (|q| <= 127), an fp16 scale per row and
 *         block of 32 inputs [N, Kp/32]; K zero-padded to Kp, a multiple of 64.
 *   x     quantized here per row and block of 32: |q| as u8, a sign bit per
 *         input and an fp32 scale per block. Blocks keep an outlier feature
 *         from flattening its neighbours.
 * Each 64-input chunk's dot products run in int32 with AVX512-VNNI
 * (vpdpbusd multiplies u8 by s8, so W's bytes are negated where x is
 * negative); lanes 0-7 hold the first block's partial sums and lanes 8-15
 * the second's, so one vector of the two blocks' scale products turns them
 * into fp32. Other CPUs get the same arithmetic in plain C.
 *
 * Threads: the rows of W are split over `threads` OpenMP threads. Built with
 * -fopenmp, this library links libgomp.so.1, which resolves to the copy
 * PyTorch has already loaded: one OpenMP runtime and one thread team.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "kernels.h"
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define Q8_VNNI 1
#else
#define Q8_VNNI 0
#endif

#define GROUP 32       /* inputs per scale, weights and activations alike */
#define CHUNK 64       /* inputs per vector: two groups */
#define ROWS 4         /* weight rows computed together (their bytes are adjacent) */
#define XROWS 4        /* activation rows reusing one load of the weights */
#define PREFETCH 4096  /* bytes ahead of the next weight rows to prefetch (1, 2, 4 and 8 KiB measured: 4 best) */
/* Non-temporal: a step reads each weight once, and a weight kept in L2/L3
 * would only push out what is read again (the KV cache, the activations):
 * 4-6 % off a SmolLM2 decode step, most of it in the attention. */
#define PREFETCH_HINT _MM_HINT_NTA
#define SCALE_PREFETCH 2048 /* bytes ahead in the scales' stream (0.5, 1, 2 KiB measured: 2 best, by ~2 %) */

int q8_has_vnni(void) { return Q8_VNNI; }

static inline float f16_to_f32(uint16_t h) { /* IEEE half, subnormals included */
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    float mag;
    if (exp == 0) mag = ldexpf((float)man, -24);
    else if (exp == 31) mag = man ? NAN : INFINITY;
    else mag = ldexpf((float)(man | 0x400u), (int)exp - 25);
    uint32_t u;
    memcpy(&u, &mag, 4);
    u |= sign;
    memcpy(&mag, &u, 4);
    return mag;
}

/* One activation row -> |q| [Kp], sign bits [Kp/64], scales [Kp/32]. */
void q8_quantize_row(const void *x, int is_bf16, int K, int Kp, uint8_t *xabs, uint64_t *xsign, float *xscale) {
    for (int c = 0; c < Kp / CHUNK; ++c) {
        float v[CHUNK], inv[2];
#if Q8_VNNI
        if ((c + 1) * CHUNK <= K) { /* a whole chunk of x: loads and maxima 16 at a time */
            for (int g = 0; g < 2; ++g) {
                __m512 amax = _mm512_setzero_ps();
                for (int i = g * GROUP; i < (g + 1) * GROUP; i += 16) {
                    const long k = (long)c * CHUNK + i;
                    const __m512 f = is_bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(
                                                   _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)x + k))), 16))
                                             : _mm512_loadu_ps((const float *)x + k);
                    _mm512_storeu_ps(v + i, f);
                    amax = _mm512_max_ps(_mm512_abs_ps(f), amax); /* a NaN lane keeps amax, as below */
                }
                const float m = _mm512_reduce_max_ps(amax);
                xscale[2 * c + g] = m / 127.f;
                inv[g] = m > 0.f ? 127.f / m : 0.f;
            }
        } else
#endif
        for (int g = 0; g < 2; ++g) {
            float amax = 0.f;
            for (int i = g * GROUP; i < (g + 1) * GROUP; ++i) {
                int k = c * CHUNK + i;
                float f = 0.f;
                if (k < K) f = is_bf16 ? bf16_to_f32(((const uint16_t *)x)[k]) : ((const float *)x)[k];
                v[i] = f;
                amax = fabsf(f) > amax ? fabsf(f) : amax;
            }
            xscale[2 * c + g] = amax / 127.f;
            inv[g] = amax > 0.f ? 127.f / amax : 0.f;
        }
        uint64_t sign = 0;
        int i = 0;
#if Q8_VNNI
        /* 16 at a time: round half to even (the default MXCSR mode), as nearbyintf does */
        for (; i < CHUNK; i += 16) {
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(v + i), _mm512_set1_ps(inv[i / GROUP])));
            sign |= (uint64_t)_mm512_movepi32_mask(q) << i;
            _mm_storeu_si128((__m128i *)(xabs + c * CHUNK + i), _mm512_cvtepi32_epi8(_mm512_abs_epi32(q)));
        }
#endif
        for (; i < CHUNK; ++i) {
            int q = (int)nearbyintf(v[i] * inv[i / GROUP]); /* ties to even, like torch.round */
            if (q < 0) { sign |= 1ull << i; q = -q; }
            xabs[c * CHUNK + i] = (uint8_t)q;
        }
        xsign[c] = sign;
    }
}

#if Q8_VNNI
/* [s0 x8, s1 x8] from two adjacent fp32 scales */
static inline __m512 two_scales(const float *s, __m512i halves) {
    double d;
    memcpy(&d, s, 8);
    return _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(_mm_castpd_ps(_mm_set_sd(d))));
}

/* [s0 x8, s1 x8] from two adjacent fp16 scales */
static inline __m512 two_half_scales(const uint16_t *s, __m512i halves) {
    int32_t bits;
    memcpy(&bits, s, 4);
    return _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(bits))));
}
#endif

#if Q8_VNNI
/* q8_tile's common case, one activation row (a batch-1 decode step): the
 * scales of a window of 8 chunks (16 groups) are converted and multiplied
 * once, and a chunk picks its two from them with one permute: 5 vector ops
 * per row and chunk instead of 8, with every value in a register. */
static void tile_one_row(const uint8_t *xabs, const uint64_t *xsign, const float *xscale, const int8_t *w0,
                         const uint16_t *wscale, int Kp, float sums[ROWS]) {
    const int nc = Kp / CHUNK, ng = Kp / GROUP;
    const __m512i zero = _mm512_setzero_si512();
    const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 acc[ROWS];
    for (int j = 0; j < ROWS; ++j) acc[j] = _mm512_setzero_ps();
    { /* the scales' stream too: the hardware prefetcher stops at every 4 KiB page */
        const char *next = (const char *)wscale + SCALE_PREFETCH;
        for (int at = 0; at < ROWS * ng * 2 + 64; at += 64) _mm_prefetch(next + at, PREFETCH_HINT);
    }
    for (int c0 = 0; c0 < nc; c0 += 8) {
        const int groups = ng - 2 * c0 < 16 ? ng - 2 * c0 : 16;
        const __mmask16 live = (__mmask16)((1u << groups) - 1);
        const __m512 xs = _mm512_maskz_loadu_ps(live, xscale + 2 * c0);
        __m512 both[ROWS]; /* x's scale times each row's, per group of the window */
        for (int j = 0; j < ROWS; ++j)
            both[j] = _mm512_mul_ps(xs, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, wscale + (long)j * ng + 2 * c0)));
        for (int c = c0; c < c0 + groups / 2; ++c) {
            const char *next = (const char *)(w0 + ROWS * (long)Kp) + c * ROWS * 64 + PREFETCH;
            for (int j = 0; j < ROWS; ++j) _mm_prefetch(next + 64 * j, PREFETCH_HINT);
            const __m512i pick = _mm512_add_epi32(halves, _mm512_set1_epi32(2 * (c - c0)));
            const __m512i xv = _mm512_loadu_si512(xabs + c * CHUNK);
            const __mmask64 negative = (__mmask64)xsign[c];
            for (int j = 0; j < ROWS; ++j) {
                const __m512i wv = _mm512_loadu_si512(w0 + j * (long)Kp + c * CHUNK);
                const __m512i dot = _mm512_dpbusd_epi32(zero, xv, _mm512_mask_sub_epi8(wv, negative, zero, wv));
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(pick, both[j]), acc[j]);
            }
        }
    }
    _mm_storeu_ps(sums, sum_each(acc[0], acc[1], acc[2], acc[3]));
}
#endif

/* Rows [n0, n0 + nr) of y for activation rows [m0, m0 + mr). */
void q8_tile(const uint8_t *xabs, const uint64_t *xsign, const float *xscale, int m0, int mr, const int8_t *w,
                 const uint16_t *wscale, const float *bias, int N, int Kp, int n0, int nr, void *y, int y_bf16) {
    const int nc = Kp / CHUNK, ng = Kp / GROUP;
#if Q8_VNNI
    if (nr == ROWS && mr == 1 && m0 == 0) {
        float sums[ROWS];
        tile_one_row(xabs, xsign, xscale, w + (long)n0 * Kp, wscale + (long)n0 * ng, Kp, sums);
        for (int j = 0; j < ROWS; ++j)
            store_value(y, n0 + j, sums[j] + (bias ? bias[n0 + j] : 0.f), y_bf16);
        return;
    }
    if (nr == ROWS) {
        const int8_t *w0 = w + (long)n0 * Kp;
        const __m512i zero = _mm512_setzero_si512();
        const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        __m512 acc[XROWS][ROWS];
        for (int i = 0; i < XROWS; ++i)
            for (int j = 0; j < ROWS; ++j) acc[i][j] = _mm512_setzero_ps();
        for (int c = 0; c < nc; ++c) {
            if (m0 == 0) { /* the next rows' bytes, ROWS cache lines per chunk */
                const char *next = (const char *)(w0 + ROWS * (long)Kp) + c * ROWS * 64 + PREFETCH;
                for (int j = 0; j < ROWS; ++j) _mm_prefetch(next + 64 * j, PREFETCH_HINT);
            }
            __m512i wv[ROWS];
            __m512 ws[ROWS];
            for (int j = 0; j < ROWS; ++j) {
                wv[j] = _mm512_loadu_si512(w0 + j * (long)Kp + c * CHUNK);
                ws[j] = two_half_scales(wscale + (long)(n0 + j) * ng + 2 * c, halves);
            }
            for (int i = 0; i < mr; ++i) {
                long m = m0 + i;
                __m512i xv = _mm512_loadu_si512(xabs + m * Kp + c * CHUNK);
                __mmask64 negative = (__mmask64)xsign[m * nc + c];
                __m512 xs = two_scales(xscale + m * ng + 2 * c, halves);
                for (int j = 0; j < ROWS; ++j) {
                    __m512i signed_w = _mm512_mask_sub_epi8(wv[j], negative, zero, wv[j]);
                    __m512i dot = _mm512_dpbusd_epi32(zero, xv, signed_w);
                    acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(xs, ws[j]), acc[i][j]);
                }
            }
        }
        for (int i = 0; i < mr; ++i)
            for (int j = 0; j < ROWS; ++j) {
                int n = n0 + j;
                store_value(y, (long)(m0 + i) * N + n, _mm512_reduce_add_ps(acc[i][j]) + (bias ? bias[n] : 0.f), y_bf16);
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
            for (int g = 0; g < ng; ++g) {
                int32_t dot = 0;
                uint64_t sign = xsign[m * nc + g / 2];
                for (int k = g * GROUP; k < (g + 1) * GROUP; ++k) {
                    int32_t q = xabs[m * Kp + k];
                    dot += ((sign >> (k % CHUNK)) & 1u) ? -q * wr[k] : q * wr[k];
                }
                total += (float)dot * (xscale[m * ng + g] * f16_to_f32(wscale[(long)n * ng + g]));
            }
            store_value(y, m * N + n, total + (bias ? bias[n] : 0.f), y_bf16);
        }
    }
}

/* y [M, N] (bf16 if y_bf16 else fp32) = x [M, K] (bf16 if x_bf16 else fp32) . W^T.
 * Returns 0, or -1 if scratch memory could not be had. */
int q8_linear(const void *x, int x_bf16, int M, int K, const int8_t *w, const uint16_t *wscale, const float *bias,
              int N, int Kp, void *y, int y_bf16, int threads) {
    const int nc = Kp / CHUNK, ng = Kp / GROUP;
    uint8_t *xabs = malloc((size_t)M * Kp);
    uint64_t *xsign = malloc((size_t)M * nc * sizeof(uint64_t));
    float *xscale = malloc((size_t)M * ng * sizeof(float));
    if (!xabs || !xsign || !xscale) {
        free(xabs); free(xsign); free(xscale);
        return -1;
    }
    const size_t x_row = (size_t)K * (x_bf16 ? 2 : 4);
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp for schedule(static)
        for (int m = 0; m < M; ++m)
            q8_quantize_row((const char *)x + m * x_row, x_bf16, K, Kp, xabs + (size_t)m * Kp, xsign + (size_t)m * nc,
                         xscale + (size_t)m * ng);
        #pragma omp for schedule(static)
        for (int n0 = 0; n0 < N; n0 += ROWS)
            for (int m0 = 0; m0 < M; m0 += XROWS)
                q8_tile(xabs, xsign, xscale, m0, M - m0 < XROWS ? M - m0 : XROWS, w, wscale, bias, N, Kp, n0,
                     N - n0 < ROWS ? N - n0 : ROWS, y, y_bf16);
    }
    free(xabs); free(xsign); free(xscale);
    return 0;
}

/* W as bf16 (out_bf16) or fp32 [N, K]: q * scale, rounded as torch rounds.
 * For large batches (prefill), where a BLAS GEMM on the dequantized weights
 * beats this file's GEMV-shaped kernel. */
void q8_dequantize(const int8_t *w, const uint16_t *wscale, int N, int K, int Kp, void *out, int out_bf16, int threads) {
    const int ng = Kp / GROUP;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int n = 0; n < N; ++n) {
        const int8_t *row = w + (long)n * Kp;
        int k = 0;
#if Q8_VNNI
        for (; k + 16 <= K; k += 16) {
            __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + k)))),
                                     _mm512_set1_ps(f16_to_f32(wscale[(long)n * ng + k / GROUP])));
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
        for (; k < K; ++k) store_value(out, (long)n * K + k, (float)row[k] * f16_to_f32(wscale[(long)n * ng + k / GROUP]), out_bf16);
    }
}

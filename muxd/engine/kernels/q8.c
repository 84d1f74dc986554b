/* muxd's CPU int8 linear ("q8"): y = x . W^T (+ bias).
 *
 * Why it exists: a batch-1 decode step is the weights' read, so its time is
 * the weights' bytes over the memory bandwidth. PyTorch's int8 CPU kernels
 * read far below bandwidth at batch 1 and oneDNN's bf16 GEMV about half of
 * it; this kernel streams int8 weights (a little over half of bf16's bytes)
 * at nearly the bandwidth `torch.sum` gets, prefetching the next rows ahead
 * of the hardware prefetcher.
 *
 * Format (llama.cpp's Q8_0 on both sides, groups of 32): W as q8_weight_t
 * says (kernels.h), |q| <= 127; x quantized here per row and group of 32
 * (q8_act_t), |q| <= 127, ties to even. A group's dot product is exact in
 * int32 and scaled by the two groups' scales in fp32.
 *
 * One dot product per instruction set (simd.h), as ggml-cpu has:
 *   AVX-512 (+VNNI)   64 inputs a vector; vpdpbusd (u8 x s8), or without
 *                     VNNI vpmaddubsw + vpmaddwd; W's bytes negated where x
 *                     is negative (a mask from x's sign bits)
 *   AVX2 (+AVX-VNNI)  32 inputs a vector, the same two ways; vpsignb
 *                     carries x's sign onto W
 *   NEON (+dotprod)   16 inputs a vector, sdot, or smull + sadalp
 *   portable          plain C
 * Sums of at most two products of 127 * 127 fit vpmaddubsw's int16 lanes.
 *
 * Threads: q8_linear splits W's rows over `threads` OpenMP threads (the
 * library links the libgomp PyTorch loaded: one runtime, one team).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "kernels.h"

#define GROUP Q8_GROUP
#define ROWS Q8_ROWS
#define XROWS Q8_XROWS
#define PREFETCH 4096       /* bytes ahead of the next weight rows to prefetch (docs/llama-cpp-peer.md) */
#define SCALE_PREFETCH 2048 /* bytes ahead in the scales' stream */
/* Non-temporal (locality 0): a step reads each weight once, and a weight
 * kept in L2/L3 would only push out what is read again (the KV cache). */
#define prefetch_weights(p) __builtin_prefetch((p), 0, 0)

static inline float f16_to_f32(uint16_t h) {
#if defined(MUXD_AVX512) || defined(MUXD_AVX2)
    return _cvtsh_ss(h);
#elif defined(MUXD_NEON)
    __fp16 f;
    memcpy(&f, &h, 2);
    return (float)f;
#else /* IEEE half, subnormals included */
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
#endif
}

/* q [32] = round(v * inv) (ties to even, as torch.round), abs [32] = |q|. */
static inline void round_group(const float *v, float inv, int8_t *q, uint8_t *abs) {
#if defined(MUXD_AVX512)
    for (int i = 0; i < GROUP; i += 16) {
        const __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(v + i), _mm512_set1_ps(inv)));
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(r));
        _mm_storeu_si128((__m128i *)(abs + i), _mm512_cvtepi32_epi8(_mm512_abs_epi32(r)));
    }
#elif defined(MUXD_AVX2)
    __m256i r[4];
    for (int i = 0; i < 4; ++i) r[i] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v + 8 * i), _mm256_set1_ps(inv)));
    const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
    const __m256i ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, ordered);
    _mm256_storeu_si256((__m256i *)abs, _mm256_abs_epi8(ordered));
#elif defined(MUXD_NEON)
    for (int i = 0; i < GROUP; i += 8) {
        const int32x4_t lo = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(v + i), inv));
        const int32x4_t hi = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(v + i + 4), inv));
        const int8x8_t r = vmovn_s16(vcombine_s16(vmovn_s32(lo), vmovn_s32(hi)));
        vst1_s8(q + i, r);
        vst1_u8(abs + i, vreinterpret_u8_s8(vabs_s8(r)));
    }
#else
    for (int i = 0; i < GROUP; ++i) {
        const int r = (int)nearbyintf(v[i] * inv);
        q[i] = (int8_t)r;
        abs[i] = (uint8_t)(r < 0 ? -r : r);
    }
#endif
}

/* Rows [0, M) of x [M, K] (fp32 or bf16) into a, K zero-padded to Kp. */
void q8_quantize_rows(const void *x, int bf16, int M, int K, const q8_act_t *a) {
    const long Kp = q8_padded(K), ng = Kp / GROUP, es = bf16 ? 2 : 4;
    for (long m = 0; m < M; ++m) {
        const char *row = (const char *)x + m * K * es;
        for (long g = 0; g < ng; ++g) {
            float v[GROUP], amax = 0.f;
            const long k0 = g * GROUP;
            int i = 0;
            if (k0 + GROUP <= K) { /* a whole group: a vector at a time */
                vf top = vf_zero();
                for (; i < GROUP; i += VF_LANES) {
                    const vf f = vf_load_act(row, k0 + i, bf16);
                    vf_store(v + i, f);
                    top = vf_max(vf_abs(f), top); /* a NaN lane keeps top, as below */
                }
                amax = vf_hmax(top);
            }
            for (; i < GROUP; ++i) {
                v[i] = k0 + i < K ? load_value(row, k0 + i, bf16) : 0.f;
                amax = fabsf(v[i]) > amax ? fabsf(v[i]) : amax;
            }
            a->scale[m * ng + g] = amax / 127.f;
            round_group(v, amax > 0.f ? 127.f / amax : 0.f, a->q + m * Kp + k0, a->abs + m * Kp + k0);
        }
    }
}

int q8_act_alloc(q8_act_t *a, int M, long Kp) {
    a->q = malloc((size_t)M * Kp);
    a->abs = malloc((size_t)M * Kp);
    a->scale = malloc((size_t)M * (Kp / GROUP) * sizeof(float));
    return a->q && a->abs && a->scale;
}

void q8_act_free(q8_act_t *a) {
    free(a->q);
    free(a->abs);
    free(a->scale);
}

/* The scales' stream too: the hardware prefetcher stops at every 4 KiB page. */
static inline void prefetch_scales(const uint16_t *wscale, long ng) {
    const char *next = (const char *)wscale + SCALE_PREFETCH;
    for (long at = 0; at < ROWS * ng * 2 + 64; at += 64) prefetch_weights(next + at);
}

#if defined(MUXD_AVX512)
/* int32 partial sums of a 64-input chunk: lanes 0-7 the first group's, 8-15 the second's. */
static inline __m512i chunk_dot(__m512i xabs, __mmask64 negative, __m512i w) {
    const __m512i signed_w = _mm512_mask_sub_epi8(w, negative, _mm512_setzero_si512(), w);
#if defined(MUXD_VNNI)
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), xabs, signed_w);
#else
    return _mm512_madd_epi16(_mm512_maddubs_epi16(xabs, signed_w), _mm512_set1_epi16(1));
#endif
}

/* One activation row against ROWS weight rows (a batch-1 decode step): the
 * scale products of a window of 8 chunks (16 groups) are made once, and a
 * chunk picks its two with one permute. */
static void tile_one_row(const q8_act_t *x, const int8_t *w0, const uint16_t *wscale, long Kp, float sums[ROWS]) {
    const long nc = Kp / Q8_CHUNK, ng = Kp / GROUP;
    const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 acc[ROWS];
    for (int j = 0; j < ROWS; ++j) acc[j] = _mm512_setzero_ps();
    prefetch_scales(wscale, ng);
    for (long c0 = 0; c0 < nc; c0 += 8) {
        const long groups = ng - 2 * c0 < 16 ? ng - 2 * c0 : 16;
        const __mmask16 live = (__mmask16)((1u << groups) - 1);
        const __m512 xs = _mm512_maskz_loadu_ps(live, x->scale + 2 * c0);
        __m512 both[ROWS]; /* x's scale times each row's, per group of the window */
        for (int j = 0; j < ROWS; ++j)
            both[j] = _mm512_mul_ps(xs, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, wscale + j * ng + 2 * c0)));
        for (long c = c0; c < c0 + groups / 2; ++c) {
            const char *next = (const char *)(w0 + ROWS * Kp) + c * ROWS * 64 + PREFETCH;
            for (int j = 0; j < ROWS; ++j) prefetch_weights(next + 64 * j);
            const __m512i pick = _mm512_add_epi32(halves, _mm512_set1_epi32(2 * (int)(c - c0)));
            const __m512i xq = _mm512_loadu_si512(x->q + c * Q8_CHUNK);
            const __m512i xabs = _mm512_loadu_si512(x->abs + c * Q8_CHUNK);
            const __mmask64 negative = _mm512_movepi8_mask(xq);
            for (int j = 0; j < ROWS; ++j) {
                const __m512i dot = chunk_dot(xabs, negative, _mm512_loadu_si512(w0 + j * Kp + c * Q8_CHUNK));
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(pick, both[j]), acc[j]);
            }
        }
    }
    vf_sum4(acc[0], acc[1], acc[2], acc[3], sums);
}

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

/* mr (<= XROWS) activation rows from m0 against ROWS weight rows: sums [mr][ROWS]. */
static void tile_rows(const q8_act_t *x, long Kp, int m0, int mr, const int8_t *w0, const uint16_t *wscale, int first,
                      float sums[XROWS][ROWS]) {
    const long nc = Kp / Q8_CHUNK, ng = Kp / GROUP;
    const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 acc[XROWS][ROWS];
    for (int i = 0; i < XROWS; ++i)
        for (int j = 0; j < ROWS; ++j) acc[i][j] = _mm512_setzero_ps();
    for (long c = 0; c < nc; ++c) {
        if (first) { /* the next rows' bytes, ROWS cache lines per chunk */
            const char *next = (const char *)(w0 + ROWS * Kp) + c * ROWS * 64 + PREFETCH;
            for (int j = 0; j < ROWS; ++j) prefetch_weights(next + 64 * j);
        }
        __m512i wv[ROWS];
        __m512 ws[ROWS];
        for (int j = 0; j < ROWS; ++j) {
            wv[j] = _mm512_loadu_si512(w0 + j * Kp + c * Q8_CHUNK);
            ws[j] = two_half_scales(wscale + j * ng + 2 * c, halves);
        }
        for (int i = 0; i < mr; ++i) {
            const long m = m0 + i;
            const __m512i xq = _mm512_loadu_si512(x->q + m * Kp + c * Q8_CHUNK);
            const __m512i xabs = _mm512_loadu_si512(x->abs + m * Kp + c * Q8_CHUNK);
            const __mmask64 negative = _mm512_movepi8_mask(xq);
            const __m512 xs = two_scales(x->scale + m * ng + 2 * c, halves);
            for (int j = 0; j < ROWS; ++j) {
                const __m512i dot = chunk_dot(xabs, negative, wv[j]);
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(xs, ws[j]), acc[i][j]);
            }
        }
    }
    for (int i = 0; i < mr; ++i) vf_sum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3], sums[i]);
}

#elif defined(MUXD_AVX2)
/* int32 partial sums of a 32-input group, 8 lanes. */
static inline __m256i group_dot(__m256i xabs, __m256i xq, __m256i w) {
    const __m256i signed_w = _mm256_sign_epi8(w, xq);
#if defined(MUXD_VNNI) && defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), xabs, signed_w);
#elif defined(MUXD_VNNI) /* AVX512-VNNI's EVEX form of the same instruction: tests run this path there */
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), xabs, signed_w);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(xabs, signed_w), _mm256_set1_epi16(1));
#endif
}

/* 8 fp16 scales from s on (fewer than 8 left: the rest 0), as fp32 */
static inline __m256 eight_scales(const uint16_t *s, long left) {
    uint16_t part[8] = {0};
    if (left < 8) memcpy(part, s, (size_t)left * 2), s = part;
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)s));
}

static inline __m256 eight_floats(const float *s, long left) {
    float part[8] = {0};
    if (left < 8) memcpy(part, s, (size_t)left * 4), s = part;
    return _mm256_loadu_ps(s);
}

/* One activation row against ROWS weight rows: the scale products of a
 * window of 8 groups are made once, and a group picks its own with one permute. */
static void tile_one_row(const q8_act_t *x, const int8_t *w0, const uint16_t *wscale, long Kp, float sums[ROWS]) {
    const long ng = Kp / GROUP;
    __m256 acc[ROWS];
    for (int j = 0; j < ROWS; ++j) acc[j] = _mm256_setzero_ps();
    prefetch_scales(wscale, ng);
    for (long g0 = 0; g0 < ng; g0 += 8) {
        const __m256 xs = eight_floats(x->scale + g0, ng - g0);
        __m256 both[ROWS];
        for (int j = 0; j < ROWS; ++j) both[j] = _mm256_mul_ps(xs, eight_scales(wscale + j * ng + g0, ng - g0));
        for (long g = g0; g < g0 + 8 && g < ng; ++g) {
            const char *next = (const char *)(w0 + ROWS * Kp) + g * ROWS * GROUP + PREFETCH;
            if (g % 2 == 0)
                for (int j = 0; j < ROWS; ++j) prefetch_weights(next + 64 * j);
            const __m256i pick = _mm256_set1_epi32((int)(g - g0));
            const __m256i xq = _mm256_loadu_si256((const __m256i *)(x->q + g * GROUP));
            const __m256i xabs = _mm256_loadu_si256((const __m256i *)(x->abs + g * GROUP));
            for (int j = 0; j < ROWS; ++j) {
                const __m256i dot = group_dot(xabs, xq, _mm256_loadu_si256((const __m256i *)(w0 + j * Kp + g * GROUP)));
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_permutevar8x32_ps(both[j], pick), acc[j]);
            }
        }
    }
    vf_sum4(acc[0], acc[1], acc[2], acc[3], sums);
}

/* mr (<= XROWS) activation rows from m0 against ROWS weight rows, two
 * activation rows at a time (16 vector registers: 8 accumulators, the
 * weight rows and scales). */
static void tile_rows(const q8_act_t *x, long Kp, int m0, int mr, const int8_t *w0, const uint16_t *wscale, int first,
                      float sums[XROWS][ROWS]) {
    const long ng = Kp / GROUP;
    for (int i0 = 0; i0 < mr; i0 += 2) {
        const int pair = mr - i0 < 2 ? mr - i0 : 2;
        __m256 acc[2][ROWS];
        for (int i = 0; i < 2; ++i)
            for (int j = 0; j < ROWS; ++j) acc[i][j] = _mm256_setzero_ps();
        for (long g = 0; g < ng; ++g) {
            if (first && i0 == 0 && g % 2 == 0) {
                const char *next = (const char *)(w0 + ROWS * Kp) + g * ROWS * GROUP + PREFETCH;
                for (int j = 0; j < ROWS; ++j) prefetch_weights(next + 64 * j);
            }
            float ws[ROWS];
            for (int j = 0; j < ROWS; ++j) ws[j] = f16_to_f32(wscale[j * ng + g]);
            for (int i = 0; i < pair; ++i) {
                const long m = m0 + i0 + i;
                const __m256i xq = _mm256_loadu_si256((const __m256i *)(x->q + m * Kp + g * GROUP));
                const __m256i xabs = _mm256_loadu_si256((const __m256i *)(x->abs + m * Kp + g * GROUP));
                const float xs = x->scale[m * ng + g];
                for (int j = 0; j < ROWS; ++j) {
                    const __m256i w = _mm256_loadu_si256((const __m256i *)(w0 + j * Kp + g * GROUP));
                    acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(group_dot(xabs, xq, w)), _mm256_set1_ps(xs * ws[j]), acc[i][j]);
                }
            }
        }
        for (int i = 0; i < pair; ++i) vf_sum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3], sums[i0 + i]);
    }
}

#elif defined(MUXD_NEON)
/* int32 partial sums of a 32-input group, 4 lanes. */
static inline int32x4_t group_dot(const int8_t *xq, const int8_t *w) {
    const int8x16_t x0 = vld1q_s8(xq), x1 = vld1q_s8(xq + 16), w0 = vld1q_s8(w), w1 = vld1q_s8(w + 16);
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), x0, w0), x1, w1);
#else
    int16x8_t p0 = vmull_s8(vget_low_s8(x0), vget_low_s8(w0));
    p0 = vmlal_s8(p0, vget_high_s8(x0), vget_high_s8(w0)); /* two products a lane: fits int16 */
    int16x8_t p1 = vmull_s8(vget_low_s8(x1), vget_low_s8(w1));
    p1 = vmlal_s8(p1, vget_high_s8(x1), vget_high_s8(w1));
    return vpadalq_s16(vpaddlq_s16(p0), p1);
#endif
}

static void tile_rows(const q8_act_t *x, long Kp, int m0, int mr, const int8_t *w0, const uint16_t *wscale, int first,
                      float sums[XROWS][ROWS]) {
    const long ng = Kp / GROUP;
    float32x4_t acc[XROWS][ROWS];
    for (int i = 0; i < XROWS; ++i)
        for (int j = 0; j < ROWS; ++j) acc[i][j] = vdupq_n_f32(0.f);
    for (long g = 0; g < ng; ++g) {
        if (first && g % 2 == 0) {
            const char *next = (const char *)(w0 + ROWS * Kp) + g * ROWS * GROUP + PREFETCH;
            for (int j = 0; j < ROWS; ++j) prefetch_weights(next + 64 * j);
        }
        float ws[ROWS];
        for (int j = 0; j < ROWS; ++j) ws[j] = f16_to_f32(wscale[j * ng + g]);
        for (int i = 0; i < mr; ++i) {
            const long m = m0 + i;
            const float xs = x->scale[m * ng + g];
            for (int j = 0; j < ROWS; ++j) {
                const int32x4_t dot = group_dot(x->q + m * Kp + g * GROUP, w0 + j * Kp + g * GROUP);
                acc[i][j] = vfmaq_n_f32(acc[i][j], vcvtq_f32_s32(dot), xs * ws[j]);
            }
        }
    }
    for (int i = 0; i < mr; ++i) vf_sum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3], sums[i]);
}
#endif

/* Rows [n0, n0 + nr) of y [M, N] for activation rows [m0, m0 + mr). */
void q8_tile(const q8_act_t *x, int m0, int mr, const q8_weight_t *w, int n0, int nr, void *y, int y_bf16) {
    const long N = w->N, Kp = q8_padded(w->K), ng = Kp / GROUP;
    const int8_t *w0 = w->q + n0 * Kp;
    const uint16_t *s0 = w->scale + n0 * ng;
    float sums[XROWS][ROWS];
    int done = 0;
#if defined(MUXD_AVX512) || defined(MUXD_AVX2)
    if (nr == ROWS && mr == 1 && m0 == 0) tile_one_row(x, w0, s0, Kp, sums[0]), done = 1;
#endif
#if !defined(MUXD_PORTABLE)
    if (!done && nr == ROWS) tile_rows(x, Kp, m0, mr, w0, s0, m0 == 0, sums), done = 1;
#endif
    if (done) {
        for (int i = 0; i < mr; ++i)
            for (int j = 0; j < ROWS; ++j)
                store_value(y, (m0 + i) * N + n0 + j, sums[i][j] + (w->bias ? w->bias[n0 + j] : 0.f), y_bf16);
        return;
    }
    for (int i = 0; i < mr; ++i) { /* plain C: the portable build, and the last rows when N % ROWS != 0 */
        const long m = m0 + i;
        for (int j = 0; j < nr; ++j) {
            const int8_t *wr = w0 + j * Kp, *xr = x->q + m * Kp;
            float total = 0.f;
            for (long g = 0; g < ng; ++g) {
                int32_t dot = 0;
                for (long k = g * GROUP; k < (g + 1) * GROUP; ++k) dot += (int32_t)xr[k] * wr[k];
                total += (float)dot * (x->scale[m * ng + g] * f16_to_f32(s0[j * ng + g]));
            }
            store_value(y, m * N + n0 + j, total + (w->bias ? w->bias[n0 + j] : 0.f), y_bf16);
        }
    }
}

/* Rows [0, M) of y [M, N] = x . W^T from x's quantized copy a, by the team. */
static void tiles(const q8_act_t *a, int M, const q8_weight_t *w, void *y, int y_bf16) {
    const long N = w->N;
    #pragma omp for schedule(static)
    for (long n0 = 0; n0 < N; n0 += ROWS)
        for (int m0 = 0; m0 < M; m0 += XROWS)
            q8_tile(a, m0, M - m0 < XROWS ? M - m0 : XROWS, w, (int)n0, N - n0 < ROWS ? (int)(N - n0) : ROWS, y, y_bf16);
}

/* Row m of x quantized into a, and, with r, the rest (x - its quantized
 * value, fp32) quantized into r. */
static void quantize_row(const void *x, int x_bf16, long m, long K, const q8_act_t *a, const q8_act_t *r, float *rest) {
    const long Kp = q8_padded(K), ng = Kp / GROUP, es = x_bf16 ? 2 : 4;
    const q8_act_t row = {a->q + m * Kp, a->abs + m * Kp, a->scale + m * ng};
    q8_quantize_rows((const char *)x + m * K * es, x_bf16, 1, (int)K, &row);
    if (!r) return;
    float *left = rest + m * K;
    for (long k = 0; k < K; ++k)
        left[k] = load_value(x, m * K + k, x_bf16) - row.scale[k / GROUP] * (float)row.q[k];
    const q8_act_t again = {r->q + m * Kp, r->abs + m * Kp, r->scale + m * ng};
    q8_quantize_rows(left, 0, 1, (int)K, &again);
}

/* y [M, N] (bf16 if y_bf16 else fp32) = x [M, K] (bf16 if x_bf16 else fp32) . W^T.
 * fine = 0: x quantized to int8 once (a decode step's rows). fine = 1: twice,
 * the second time the first's rounding error, each an int8 pass over W:
 * about 15 bits of x, finer than bf16, for a prefill's rows (one int8
 * rounding of a short prefill tipped SmolLM2's near-tie answer to the demo
 * question). Returns 0, or -1 if scratch memory could not be had. */
int q8_linear(const void *x, int x_bf16, int M, const q8_weight_t *w, void *y, int y_bf16, int fine, int threads) {
    const long Kp = q8_padded(w->K), N = w->N;
    q8_act_t a, r = {0};
    float *rest = NULL, *y1 = NULL, *y2 = NULL;
    int ok = q8_act_alloc(&a, M, Kp);
    if (fine) {
        ok = q8_act_alloc(&r, M, Kp) && ok;
        rest = malloc(sizeof(float) * (size_t)(M * w->K));
        y1 = malloc(sizeof(float) * (size_t)(M * N)), y2 = malloc(sizeof(float) * (size_t)(M * N));
        ok = ok && rest && y1 && y2;
    }
    if (ok) {
        const q8_weight_t bare = {w->q, w->scale, NULL, w->N, w->K}; /* the bias, once */
        #pragma omp parallel num_threads(threads)
        {
            #pragma omp for schedule(static)
            for (int m = 0; m < M; ++m) quantize_row(x, x_bf16, m, w->K, &a, fine ? &r : NULL, rest);
            tiles(&a, M, w, fine ? (void *)y1 : y, fine ? 0 : y_bf16);
            if (fine) {
                tiles(&r, M, &bare, y2, 0);
                #pragma omp for schedule(static)
                for (long i = 0; i < M * N; ++i) store_value(y, i, y1[i] + y2[i], y_bf16);
            }
        }
    }
    q8_act_free(&a);
    if (fine) q8_act_free(&r);
    free(rest), free(y1), free(y2);
    return ok ? 0 : -1;
}

/* W as bf16 (out_bf16) or fp32 [N, K]: q * scale, rounded as torch rounds.
 * For large batches (prefill), where a BLAS GEMM on the dequantized weights
 * beats this file's GEMV-shaped kernel. */
void q8_dequantize(const q8_weight_t *w, void *out, int out_bf16, int threads) {
    const long K = w->K, Kp = q8_padded(K), ng = Kp / GROUP;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long n = 0; n < w->N; ++n) {
        const int8_t *row = w->q + n * Kp;
        long k = 0;
#if !defined(MUXD_PORTABLE)
        for (; k + VF_LANES <= K; k += VF_LANES) { /* VF_LANES divides GROUP: one scale a vector */
            const vf v = vf_mul(vf_load_i8(row + k), vf_set1(f16_to_f32(w->scale[n * ng + k / GROUP])));
            if (out_bf16) vf_store_bf16((uint16_t *)out + n * K + k, v); /* finite: no NaN to keep */
            else vf_store((float *)out + n * K + k, v);
        }
#endif
        for (; k < K; ++k) store_value(out, n * K + k, (float)row[k] * f16_to_f32(w->scale[n * ng + k / GROUP]), out_bf16);
    }
}

#ifndef MUXD_ISA_NAME
#define MUXD_ISA_NAME "portable"
#endif

/* The instruction set this build was made for (engine/cpu_kernels.py's ISAS). */
const char *muxd_isa(void) { return MUXD_ISA_NAME; }

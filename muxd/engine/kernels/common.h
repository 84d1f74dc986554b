/* What every muxd CPU kernel shares: reading and writing activations that
 * are fp32 or bf16 (a runtime flag), rounding as torch rounds. */
#ifndef MUXD_KERNELS_COMMON_H
#define MUXD_KERNELS_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

static inline float load_value(const void *p, long i, int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store_value(void *p, long i, float v, int bf16) {
    if (bf16) ((uint16_t *)p)[i] = f32_to_bf16(v);
    else ((float *)p)[i] = v;
}

/* The value as the dtype holds it: bf16-rounded, or as is. */
static inline float rounded(float v, int bf16) { return bf16 ? bf16_to_f32(f32_to_bf16(v)) : v; }

#if defined(__AVX512F__)
/* The sums of a, b, c and d's lanes, as [a, b, c, d]: 13 vector ops where
 * four full reductions take 32. */
static inline __m128 sum_each(__m512 a, __m512 b, __m512 c, __m512 d) {
    const __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    const __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    const __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    const __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    const __m256 all = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, d8));
    return _mm_add_ps(_mm256_castps256_ps128(all), _mm256_extractf128_ps(all, 1));
}
#endif

#if defined(__AVX512F__)
/* e^x in 16 lanes: Cody-Waite range reduction (x = n ln2 + r, |r| <= ln2 / 2)
 * and a degree-7 Taylor polynomial in r; within an ulp of expf (relative
 * error below 1e-7), 0 below e^-104. */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x); /* ln2's high bits: n * them is exact */
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 p = _mm512_set1_ps(1.f / 5040.f);
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.f / 720.f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.f / 120.f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.f / 24.f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.f / 6.f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}
#endif

/* The sum of exp(x[j] - top) for j < n, each term also stored in out[j]
 * when out is not NULL (out may be x). 16 at a time with AVX-512: scalar
 * expf calls took a third of an attention head's time. */
static inline float exp_shifted(const float *x, long n, float top, float *out) {
    long j = 0;
    float sum = 0.f;
#if defined(__AVX512F__)
    __m512 total = _mm512_setzero_ps();
    for (; j < n; j += 16) {
        const __mmask16 live = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, x + j), _mm512_set1_ps(top)));
        if (out) _mm512_mask_storeu_ps(out + j, live, e);
        total = _mm512_add_ps(total, _mm512_maskz_mov_ps(live, e));
    }
    return _mm512_reduce_add_ps(total);
#endif
    for (; j < n; ++j) {
        const float e = expf(x[j] - top);
        if (out) out[j] = e;
        sum += e;
    }
    return sum;
}

#endif

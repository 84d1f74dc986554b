/* The vector instructions of this build of muxd's CPU kernels, as one small
 * vocabulary (ggml-cpu's simd-mappings.h does the same): `vf` is a vector of
 * VF_LANES fp32 values and the vf_* functions its operations.
 *
 * engine/cpu_kernels.py builds the library once per instruction set and
 * loads the one this CPU runs best (or MUXD_CPU_ISA names); each build
 * defines one of MUXD_AVX512, MUXD_AVX2, MUXD_NEON (none: the portable
 * build, plain C the compiler may vectorize), and MUXD_VNNI where the int8
 * dot-product instructions are there (q8.c). A path is chosen by those
 * macros, never by what the compiling machine happens to have.
 */
#ifndef MUXD_KERNELS_SIMD_H
#define MUXD_KERNELS_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(MUXD_AVX512)
#include <immintrin.h>
typedef __m512 vf;
#define VF_LANES 16
static inline vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline vf vf_set1(float x) { return _mm512_set1_ps(x); }
static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vf_load_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline vf vf_load_i8(const int8_t *p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p))); }
/* v's lanes rounded to bf16 (to nearest even, as torch; for finite values) into p */
static inline void vf_store_bf16(uint16_t *p, vf v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(r));
}
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_fmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); }
static inline vf vf_abs(vf a) { return _mm512_abs_ps(a); }
static inline vf vf_round(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline float vf_sum(vf a) { return _mm512_reduce_add_ps(a); }
static inline float vf_hmax(vf a) { return _mm512_reduce_max_ps(a); }
static inline int vf_has_nan(vf a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) != 0; }
static inline vf vf_scale2(vf p, vf n) { return _mm512_scalef_ps(p, n); } /* p * 2^n */
/* The sums of a, b, c and d's lanes, into out[0..3]: 13 vector ops where four reductions take 32. */
static inline void vf_sum4(vf a, vf b, vf c, vf d, float *out) {
    const __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    const __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    const __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    const __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    const __m256 all = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, d8));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(all), _mm256_extractf128_ps(all, 1)));
}

#elif defined(MUXD_AVX2)
#include <immintrin.h>
typedef __m256 vf;
#define VF_LANES 8
static inline vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline vf vf_set1(float x) { return _mm256_set1_ps(x); }
static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vf_load_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline vf vf_load_i8(const int8_t *p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))); }
static inline void vf_store_bf16(uint16_t *p, vf v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
    _mm_storeu_si128((__m128i *)p, _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}
static inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_fmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf vf_min(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline vf vf_abs(vf a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), a); }
static inline vf vf_round(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline float vf_sum(vf a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
static inline float vf_hmax(vf a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
static inline int vf_has_nan(vf a) { return _mm256_movemask_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q)) != 0; }
/* p * 2^n for whole n in [-252, 254], in two steps so that neither factor leaves the normal range */
static inline vf vf_scale2(vf p, vf n) {
    const __m256i k = _mm256_cvtps_epi32(n), half = _mm256_srai_epi32(k, 1);
    const __m256i bias = _mm256_set1_epi32(127);
    const vf a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
    const vf b = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(k, half), bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, a), b);
}
static inline void vf_sum4(vf a, vf b, vf c, vf d, float *out) {
    const __m256 all = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(all), _mm256_extractf128_ps(all, 1)));
}

#elif defined(MUXD_NEON)
#include <arm_neon.h>
typedef float32x4_t vf;
#define VF_LANES 4
static inline vf vf_zero(void) { return vdupq_n_f32(0.f); }
static inline vf vf_set1(float x) { return vdupq_n_f32(x); }
static inline vf vf_load(const float *p) { return vld1q_f32(p); }
static inline void vf_store(float *p, vf v) { vst1q_f32(p, v); }
static inline vf vf_load_bf16(const uint16_t *p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
static inline vf vf_load_i8(const int8_t *p) {
    int8_t four[8] = {0};
    memcpy(four, p, 4);
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(vld1_s8(four)))));
}
static inline void vf_store_bf16(uint16_t *p, vf v) {
    const uint32x4_t u = vreinterpretq_u32_f32(v);
    const uint32x4_t odd = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    vst1_u16(p, vshrn_n_u32(vaddq_u32(u, vaddq_u32(odd, vdupq_n_u32(0x7fff))), 16));
}
static inline vf vf_add(vf a, vf b) { return vaddq_f32(a, b); }
static inline vf vf_sub(vf a, vf b) { return vsubq_f32(a, b); }
static inline vf vf_mul(vf a, vf b) { return vmulq_f32(a, b); }
static inline vf vf_fmadd(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
/* a > b ? a : b, as x86's max and the portable build: a NaN in a gives b */
static inline vf vf_max(vf a, vf b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }
static inline vf vf_min(vf a, vf b) { return vbslq_f32(vcltq_f32(a, b), a, b); }
static inline vf vf_abs(vf a) { return vabsq_f32(a); }
static inline vf vf_round(vf a) { return vrndnq_f32(a); }
static inline float vf_sum(vf a) { return vaddvq_f32(a); }
static inline float vf_hmax(vf a) { return vmaxvq_f32(a); }
static inline int vf_has_nan(vf a) { return vminvq_u32(vceqq_f32(a, a)) == 0; }
static inline vf vf_scale2(vf p, vf n) {
    const int32x4_t k = vcvtq_s32_f32(n), half = vshrq_n_s32(k, 1), bias = vdupq_n_s32(127);
    const vf a = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(half, bias), 23));
    const vf b = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vsubq_s32(k, half), bias), 23));
    return vmulq_f32(vmulq_f32(p, a), b);
}
static inline void vf_sum4(vf a, vf b, vf c, vf d, float *out) {
    vst1q_f32(out, vpaddq_f32(vpaddq_f32(a, b), vpaddq_f32(c, d)));
}

#else /* portable: one lane; loops over it are plain C for the compiler to vectorize */
typedef float vf;
#define VF_LANES 1
#define MUXD_PORTABLE 1
static inline vf vf_zero(void) { return 0.f; }
static inline vf vf_set1(float x) { return x; }
static inline vf vf_load(const float *p) { return *p; }
static inline void vf_store(float *p, vf v) { *p = v; }
static inline vf vf_load_bf16(const uint16_t *p) {
    uint32_t u = (uint32_t)*p << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline vf vf_load_i8(const int8_t *p) { return (float)*p; }
static inline vf vf_add(vf a, vf b) { return a + b; }
static inline vf vf_sub(vf a, vf b) { return a - b; }
static inline vf vf_mul(vf a, vf b) { return a * b; }
static inline vf vf_fmadd(vf a, vf b, vf c) { return a * b + c; }
static inline vf vf_max(vf a, vf b) { return a > b ? a : b; }
static inline vf vf_min(vf a, vf b) { return a < b ? a : b; }
static inline vf vf_abs(vf a) { return fabsf(a); }
static inline float vf_sum(vf a) { return a; }
static inline float vf_hmax(vf a) { return a; }
static inline int vf_has_nan(vf a) { return isnan(a); }
static inline void vf_sum4(vf a, vf b, vf c, vf d, float *out) { out[0] = a, out[1] = b, out[2] = c, out[3] = d; }
#endif

#if !defined(MUXD_PORTABLE)
/* e^x in every lane: Cody-Waite range reduction (x = n ln2 + r, |r| <= ln2 / 2)
 * and a degree-7 Taylor polynomial in r; within an ulp of expf (relative
 * error below 1e-7), 0 below e^-104 and inf above e^89 (x is clamped to
 * [-104, 89] first, which keeps n within vf_scale2's range). */
static inline vf vf_exp(vf x) {
    x = vf_min(vf_max(x, vf_set1(-104.f)), vf_set1(89.f));
    const vf n = vf_round(vf_mul(x, vf_set1(1.44269504088896341f)));
    x = vf_sub(x, vf_mul(n, vf_set1(0.693359375f))); /* ln2's high bits: n * them is exact */
    x = vf_sub(x, vf_mul(n, vf_set1(-2.12194440e-4f)));
    vf p = vf_set1(1.f / 5040.f);
    p = vf_fmadd(p, x, vf_set1(1.f / 720.f));
    p = vf_fmadd(p, x, vf_set1(1.f / 120.f));
    p = vf_fmadd(p, x, vf_set1(1.f / 24.f));
    p = vf_fmadd(p, x, vf_set1(1.f / 6.f));
    p = vf_fmadd(p, x, vf_set1(0.5f));
    p = vf_fmadd(p, x, vf_set1(1.f));
    p = vf_fmadd(p, x, vf_set1(1.f));
    return vf_scale2(p, n);
}
#endif

#endif

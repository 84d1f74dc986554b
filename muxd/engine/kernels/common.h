/* What every muxd CPU kernel shares: reading and writing activations that
 * are fp32 or bf16 (a runtime flag), rounding as torch rounds. */
#ifndef MUXD_KERNELS_COMMON_H
#define MUXD_KERNELS_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "simd.h"

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

/* VF_LANES activations from index i on, as fp32. */
static inline vf vf_load_act(const void *p, long i, int bf16) {
    return bf16 ? vf_load_bf16((const uint16_t *)p + i) : vf_load((const float *)p + i);
}

/* The sum of exp(x[j] - top) for j < n, each term also stored in out[j]
 * when out is not NULL (out may be x). A vector at a time: scalar expf
 * calls took a third of an attention head's time. */
static inline float exp_shifted(const float *x, long n, float top, float *out) {
    long j = 0;
    double sum = 0.; /* the portable build sums all n terms here: fp32 lost 1e-4 of 49k */
#if !defined(MUXD_PORTABLE)
    vf total = vf_zero();
    for (; j + VF_LANES <= n; j += VF_LANES) {
        const vf e = vf_exp(vf_sub(vf_load(x + j), vf_set1(top)));
        if (out) vf_store(out + j, e);
        total = vf_add(total, e);
    }
    sum = vf_sum(total);
#endif
    for (; j < n; ++j) {
        const float e = expf(x[j] - top);
        if (out) out[j] = e;
        sum += e;
    }
    return (float)sum;
}

#endif

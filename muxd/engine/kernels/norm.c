/* RMSNorm of a decode step's rows, with the residual add before it fused in.
 *
 * Why it exists: transformers' RMSNorm is half a dozen small torch ops (and
 * F.rms_norm decomposes into as many on the CPU), ~10 us each call at batch 1,
 * and a decode step runs two per layer plus the residual adds between them.
 *
 * Arithmetic as engine/model.py's RMSNorm: the mean of squares and the
 * normalisation in fp32, the result rounded to the activations' dtype, then
 * multiplied by the weight (in that dtype, rounded again).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float load(const void *p, long i, int bf16) {
    if (!bf16) return ((const float *)p)[i];
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float round_to(float v, int bf16) { /* the dtype's value: bf16 rounds to nearest even */
    if (!bf16) return v;
    uint32_t u;
    memcpy(&u, &v, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return v;
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&v, &u, 4);
    return v;
}

static inline void put(void *p, long i, float v, int bf16) { /* v already rounded when bf16 */
    if (!bf16) {
        ((float *)p)[i] = v;
        return;
    }
    uint32_t u;
    memcpy(&u, &v, 4);
    ((uint16_t *)p)[i] = (uint16_t)(u >> 16);
}

/* For each of `rows` rows of `dim` values: sum = x + residual (when residual
 * is not NULL; stored in `sum`, else x is read as is), out = RMSNorm(sum) * weight. */
void add_rms_norm(const void *x, const void *residual, const void *weight, float eps, int rows, int dim, void *sum,
                  void *out, int bf16) {
    float row[dim];
    for (int r = 0; r < rows; ++r) {
        const long at = (long)r * dim;
        float squares = 0.f;
        for (int d = 0; d < dim; ++d) {
            float v = load(x, at + d, bf16);
            if (residual) {
                v = round_to(v + load(residual, at + d, bf16), bf16);
                put(sum, at + d, v, bf16);
            }
            row[d] = v;
        }
        #pragma omp simd reduction(+ : squares)
        for (int d = 0; d < dim; ++d) squares += row[d] * row[d];
        const float scale = 1.f / sqrtf(squares / (float)dim + eps);
        for (int d = 0; d < dim; ++d)
            put(out, at + d, round_to(round_to(row[d] * scale, bf16) * load(weight, d, bf16), bf16), bf16);
    }
}

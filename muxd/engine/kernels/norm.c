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

#include "common.h"
#include "kernels.h"

/* One row of `dim` values: sum = x + residual (when residual is not NULL;
 * stored in `sum`, else x is read as is), out = RMSNorm(sum) * weight. */
void norm_row(const void *x, const void *residual, const void *weight, float eps, int dim, void *sum, void *out,
              int bf16) {
    float row[dim];
    float squares = 0.f;
    for (int d = 0; d < dim; ++d) {
        float v = load_value(x, d, bf16);
        if (residual) {
            v = rounded(v + load_value(residual, d, bf16), bf16);
            store_value(sum, d, v, bf16);
        }
        row[d] = v;
    }
    #pragma omp simd reduction(+ : squares)
    for (int d = 0; d < dim; ++d) squares += row[d] * row[d];
    const float scale = 1.f / sqrtf(squares / (float)dim + eps);
    for (int d = 0; d < dim; ++d)
        store_value(out, d, rounded(rounded(row[d] * scale, bf16) * load_value(weight, d, bf16), bf16), bf16);
}

/* norm_row over `rows` rows. */
void add_rms_norm(const void *x, const void *residual, const void *weight, float eps, int rows, int dim, void *sum,
                  void *out, int bf16) {
    const long es = bf16 ? 2 : 4;
    for (int r = 0; r < rows; ++r) {
        const long at = (long)r * dim * es;
        norm_row((const char *)x + at, residual ? (const char *)residual + at : NULL, weight, eps, dim,
                 sum ? (char *)sum + at : NULL, (char *)out + at, bf16);
    }
}

/* The kernels one file calls from another (decode_step.c runs the others'
 * pieces inside one thread team). */
#ifndef MUXD_KERNELS_H
#define MUXD_KERNELS_H

#include <stdint.h>

#define Q8_GROUP 32 /* q8.c: inputs per scale */
#define Q8_CHUNK 64 /* q8.c: inputs per vector */
#define Q8_ROWS 4   /* q8.c: weight rows per tile */
#define Q8_XROWS 4  /* q8.c: activation rows per tile */

void q8_quantize_row(const void *x, int is_bf16, int K, int Kp, uint8_t *xabs, uint64_t *xsign, float *xscale);
void q8_tile(const uint8_t *xabs, const uint64_t *xsign, const float *xscale, int m0, int mr, const int8_t *w,
             const uint16_t *wscale, const float *bias, int N, int Kp, int n0, int nr, void *y, int y_bf16);
void norm_row(const void *x, const void *residual, const void *weight, float eps, int dim, void *sum, void *out,
              int bf16);
int attention_part(const void *qk, long qk_stride, const void *v, long v_stride, const void *cos, const void *sin,
                   const int64_t *positions, void *k_cache, void *v_cache, long page_stride, long row_stride,
                   const int64_t *table, long block_stride, long write_page, int window, float scale, int b, int h,
                   int Hq, int Hkv, int D, int page_tokens, long p, int bf16, float *top, float *total, float *acc);
#define ATTENTION_PART_KEYS 128 /* attention.c: keys per part of a head's keys */
#define ATTENTION_MAX_PARTS 8
long attention_parts(long S);
void attention_span(const int64_t *positions, int b, int window, long *first, long *ctx);
void attention_part_keys(const int64_t *positions, int b, int window, long p, long *j0, long *j1);
void attention_merge(const float *top, const float *total, const float *acc, int parts, long stride, int D,
                     void *out, long out_at, int bf16);

typedef struct { /* sampling.c: a part of a row of logits */
    long best; /* index of the largest value (or of the first NaN) in the part */
    float top, sum; /* the largest value; the sum of exp(x - top) */
    int nan;
} argmax_lse_t;
void argmax_lse_part(const float *x, long n, argmax_lse_t *part);
void argmax_lse_merge(const argmax_lse_t *parts, const long *offsets, int n, int64_t *argmax, float *lse);

#endif

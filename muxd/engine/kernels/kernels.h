/* The kernels one file calls from another (decode_step.c runs the others'
 * pieces inside one thread team). */
#ifndef MUXD_KERNELS_H
#define MUXD_KERNELS_H

#include <stdint.h>

#define Q8_GROUP 32 /* q8.c: inputs per scale */
#define Q8_CHUNK 64 /* q8.c: K is padded to a multiple of this */
#define Q8_ROWS 4   /* q8.c: weight rows per tile */
#define Q8_XROWS 4  /* q8.c: activation rows per tile */

/* q8.c's int8 weights W [N, Kp] (Kp: K rounded up to Q8_CHUNK), an fp16
 * scale per row and group of 32 [N, Kp / 32], an fp32 bias [N] or NULL.
 * Mirrored by engine/cpu_kernels.py's Q8Weight. */
typedef struct {
    const int8_t *q;
    const uint16_t *scale;
    const float *bias;
    int64_t N, K;
} q8_weight_t;

/* Activation rows [M, Kp] quantized per row and group of 32: q (int8), |q|
 * (the unsigned operand of the x86 dot products) and an fp32 scale a group. */
typedef struct {
    int8_t *q;
    uint8_t *abs;
    float *scale;
} q8_act_t;

static inline long q8_padded(long K) { return (K + Q8_CHUNK - 1) / Q8_CHUNK * Q8_CHUNK; }
int q8_act_alloc(q8_act_t *a, int M, long Kp);
void q8_act_free(q8_act_t *a);
void q8_quantize_rows(const void *x, int bf16, int M, int K, const q8_act_t *a);
void q8_tile(const q8_act_t *x, int m0, int mr, const q8_weight_t *w, int n0, int nr, void *y, int y_bf16);
void norm_row(const void *x, const void *residual, const void *weight, float eps, int dim, void *sum, void *out,
              int bf16);
int attention_part(const void *qk, long qk_stride, const void *v, long v_stride, const void *cos, const void *sin,
                   const int64_t *positions, void *k_cache, void *v_cache, long page_stride, long row_stride,
                   const int64_t *table, long block_stride, long write_page, int window, float scale, int b, int h,
                   int Hq, int Hkv, int D, int page_tokens, long p, int bf16, float *top, float *total, float *acc);
/* One transformer block of a q8 model as decode_layers reads it.
 * Mirrored by engine/cpu_kernels.py's DecodeLayer. */
typedef struct {
    const void *input_norm; /* [H], in the activations' dtype */
    q8_weight_t qkv, o;
    const void *post_norm;
    q8_weight_t gate_up, down;
    int64_t window; /* sliding window; 0: none */
} decode_layer_t;

/* A q8 model's decode step, fixed at load: shapes and weights. With
 * final_norm and lm_head (else NULL), a step asked for logits ends with
 * them. Mirrored by engine/cpu_kernels.py's DecodeModel. */
typedef struct {
    const decode_layer_t *layers; /* [L] */
    int64_t L, H, I, Hq, Hkv, D, V;
    float eps, scale; /* RMSNorm's epsilon; attention's 1 / sqrt(D) */
    int64_t bf16;     /* activations, norm weights, RoPE tables and KV pool in bf16 (else fp32) */
    const void *final_norm;
    const q8_weight_t *lm_head;
} decode_model_t;

/* One decode step's batch of B sequences, one new token each.
 * Mirrored by engine/cpu_kernels.py's DecodeBatch. */
typedef struct {
    void *x;                      /* [B, H]: the tokens' embeddings in, the last block's output out */
    int64_t B;
    const void *cos, *sin;        /* [B, D]: RoPE at each token's position (sin's first half negated) */
    const int64_t *positions;     /* [B] */
    void *k_cache, *v_cache;      /* the pool's planes: pages of page_tokens rows, row_stride apart */
    int64_t page_stride, row_stride, page_tokens;
    const int64_t *block_tables;  /* [B, M, L, Hkv]: each sequence's page per block, layer and KV head */
    int64_t M;
    float *logits;                /* [B, V] fp32, or NULL: no head this step */
    int64_t *argmax;              /* [B] */
    float *lse;                   /* [B]: log-normalisers */
    int64_t threads;
} decode_batch_t;

/* One layer's decode attention (attention.c: decode_attention): RoPE on the
 * new tokens' q and k, k and v written into their pages, then each query
 * head attends to its sequence's keys. Every tensor has the activations'
 * dtype (bf16 if bf16, else fp32). Mirrored by engine/cpu_kernels.py's
 * DecodeAttention. */
typedef struct {
    const void *qk;               /* [B, Hq + Hkv, D], rows qk_stride apart: before RoPE */
    int64_t qk_stride;
    const void *v;                /* [B, Hkv, D], rows v_stride apart */
    int64_t v_stride;
    const void *cos, *sin;        /* [B, D]: RoPE at each token's position (sin's first half negated) */
    const int64_t *positions;     /* [B] */
    void *k_cache, *v_cache;      /* as in decode_batch_t */
    int64_t page_stride, row_stride, page_tokens;
    const int64_t *write_pages;   /* [B, Hkv]: the page of each new k/v, at slot positions[b] % page_tokens */
    const int64_t *tables;        /* [B, Hkv, M]: page ids; keys 0 .. positions[b] once the new one is in */
    int64_t M, window;            /* window > 0 keeps only the last `window` keys */
    float scale;
    int64_t B, Hq, Hkv, D;
    void *out;                    /* [B, Hq * D] */
    int64_t bf16, threads;
} decode_attention_t;
int decode_attention(const decode_attention_t *a);
int decode_layers(const decode_model_t *m, const decode_batch_t *s);
int q8_linear(const void *x, int x_bf16, int M, const q8_weight_t *w, void *y, int y_bf16, int fine, int threads);
void q8_dequantize(const q8_weight_t *w, void *out, int out_bf16, int threads);
void add_rms_norm(const void *x, const void *residual, const void *weight, float eps, int rows, int dim, void *sum,
                  void *out, int bf16);
void logits_argmax_lse(const float *logits, int B, long V, int64_t *argmax, float *lse);
void logits_mask_argmax(float *logits, long V, const int64_t *rows, int R, const int32_t *bits, long W,
                        int64_t *argmax);
const char *muxd_isa(void);

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

/* Decode attention over muxd's paged, head-wise KV pool: one query token per
 * sequence, RoPE and the KV write included, in one call per layer.
 *
 * Why it exists: in torch, a decode step's attention is a dozen small ops per
 * layer (gathering the pages, converting, a batched matmul, a softmax,
 * another matmul) whose dispatch costs more than their arithmetic at small
 * batches: on SmolLM2 at batch 1 the attention took ~1.8 ms of a ~13 ms step.
 * Here each (sequence, KV head) walks its page table once and reads only the
 * keys its query may see.
 *
 * Layout (engine/kv_cache.py): K and V planes [pages, page_tokens, width],
 * the first D entries of a row holding one head's vector; a sequence's
 * table lists, per KV head, its page of each block. Grouped query heads
 * (G = Hq / Hkv) share their KV head's pages. Everything is computed in fp32.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "kernels.h"

/* A K or V row as fp32. */
static inline void load_row(const void *cache, long at, int bf16, int D, float *row) {
    if (!bf16) {
        memcpy(row, (const float *)cache + at, sizeof(float) * D);
        return;
    }
    const uint16_t *src = (const uint16_t *)cache + at;
    #pragma omp simd
    for (int d = 0; d < D; ++d) {
        uint32_t u = (uint32_t)src[d] << 16;
        float f;
        memcpy(&f, &u, 4);
        row[d] = f;
    }
}

/* Pages lie anywhere in the pool: ask for key j's row before it is needed. */
#define AHEAD 8
static inline void prefetch_row(const void *cache, const int64_t *table, long j, long ctx, int page_tokens,
                                long page_stride, long row_stride, int D, int bf16) {
    if (j >= ctx) return;
    const char *at = (const char *)cache + (table[j / page_tokens] * page_stride + (j % page_tokens) * row_stride) * (bf16 ? 2 : 4);
    for (int off = 0; off < D * (bf16 ? 2 : 4); off += 64) __builtin_prefetch(at + off);
}

/* RoPE of one head vector x (D values) at one position, as engine/model.py
 * computes it: x * cos + roll(x, D/2) * sin, sin's first half negated in its
 * table; each product and the sum rounded to the dtype, as torch rounds. */
static inline void rope(const void *x, long at, const void *cos, const void *sin, long cos_at, int D, int bf16,
                        float *out) {
    for (int d = 0; d < D; ++d) {
        float a = rounded(load_value(x, at + d, bf16) * load_value(cos, cos_at + d, bf16), bf16);
        float b = rounded(load_value(x, at + (d + D / 2) % D, bf16) * load_value(sin, cos_at + d, bf16), bf16);
        out[d] = rounded(a + b, bf16);
    }
}

/* decode_attention's work for sequence b and KV head h (its G query heads).
 * Returns 0, or -1 if scratch memory could not be had. */
int attention_head(const void *qk, long qk_stride, const void *v, long v_stride, const void *cos, const void *sin,
                   const int64_t *positions, void *k_cache, void *v_cache, long page_stride, long row_stride,
                   const int64_t *write_pages, const int64_t *tables, int M, int window, float scale, int b, int h,
                   int Hq, int Hkv, int D, int page_tokens, void *out, int bf16) {
    const int G = Hq / Hkv;
    const long pos = positions[b], ctx = pos + 1;
    const long first = window > 0 && ctx > window ? ctx - window : 0;
    const long S = ctx - first;
    float *scores = malloc(sizeof(float) * (size_t)(G * S + 2 * G * D + 2 * D));
    if (!scores) {
        return -1;
    }
    float *qv = scores + G * S, *acc = qv + G * D, *row = acc + G * D, *k_new = row + D;
    /* the new token: q heads roped, k roped and stored, v stored */
    for (int g = 0; g < G; ++g) rope(qk, b * qk_stride + (long)(h * G + g) * D, cos, sin, b * D, D, bf16, qv + g * D);
    rope(qk, b * qk_stride + (long)(Hq + h) * D, cos, sin, b * D, D, bf16, k_new);
    const long slot = write_pages[b * Hkv + h] * page_stride + (pos % page_tokens) * row_stride;
    for (int d = 0; d < D; ++d) {
        store_value(k_cache, slot + d, k_new[d], bf16);
        store_value(v_cache, slot + d, load_value(v, b * v_stride + (long)h * D + d, bf16), bf16);
    }
    const int64_t *table = tables + ((long)b * Hkv + h) * M;
    for (long j = first; j < ctx; ++j) {
        prefetch_row(k_cache, table, j + AHEAD, ctx, page_tokens, page_stride, row_stride, D, bf16);
        load_row(k_cache, table[j / page_tokens] * page_stride + (j % page_tokens) * row_stride, bf16, D, row);
        for (int g = 0; g < G; ++g) {
            const float *qg = qv + g * D;
            float dot = 0.f;
            #pragma omp simd reduction(+ : dot)
            for (int d = 0; d < D; ++d) dot += qg[d] * row[d];
            scores[g * S + (j - first)] = dot * scale;
        }
    }
    for (int g = 0; g < G; ++g) {
        float *s = scores + g * S, top = -INFINITY, total = 0.f;
        for (long j = 0; j < S; ++j) top = s[j] > top ? s[j] : top;
        for (long j = 0; j < S; ++j) total += (s[j] = expf(s[j] - top));
        for (long j = 0; j < S; ++j) s[j] /= total;
    }
    memset(acc, 0, sizeof(float) * G * D);
    for (long j = first; j < ctx; ++j) {
        prefetch_row(v_cache, table, j + AHEAD, ctx, page_tokens, page_stride, row_stride, D, bf16);
        load_row(v_cache, table[j / page_tokens] * page_stride + (j % page_tokens) * row_stride, bf16, D, row);
        for (int g = 0; g < G; ++g) {
            float *ag = acc + g * D, p = scores[g * S + (j - first)];
            #pragma omp simd
            for (int d = 0; d < D; ++d) ag[d] += p * row[d];
        }
    }
    for (int g = 0; g < G; ++g)
        for (int d = 0; d < D; ++d) store_value(out, (long)b * Hq * D + (long)(h * G + g) * D + d, acc[g * D + d], bf16);
    free(scores);
    return 0;
}

/* A decode step's attention for one layer: RoPE on the new token's q and k,
 * k and v written into their pages, then each query head attends to its
 * sequence's keys.
 *   qk [B, Hq + Hkv, D] (row stride qk_stride), v [B, Hkv, D] (row stride
 *   v_stride): the new tokens' projections, RoPE not yet applied;
 *   cos, sin [B, D]: the tables' rows at the tokens' positions [B];
 *   write_pages [B, Hkv]: the page
 *   of each new k/v, at slot positions[b] % page_tokens;
 *   tables [B, Hkv, M]: page ids; keys 0 .. positions[b] exist once the new
 *   one is in; window > 0 keeps only the last `window` of them.
 *   out [B, Hq * D].
 * Every tensor has the activations' dtype (bf16 if bf16, else fp32).
 * Returns 0, or -1 if scratch memory could not be had. */
int decode_attention(const void *qk, long qk_stride, const void *v, long v_stride, const void *cos, const void *sin,
                     const int64_t *positions, void *k_cache, void *v_cache, long page_stride, long row_stride,
                     const int64_t *write_pages, const int64_t *tables, int M, int window, float scale, int B, int Hq,
                     int Hkv, int D, int page_tokens, void *out, int bf16, int threads) {
    int failed = 0;
    #pragma omp parallel for num_threads(threads) schedule(dynamic) collapse(2) if (B * Hkv >= 8)
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < Hkv; ++h)
            if (attention_head(qk, qk_stride, v, v_stride, cos, sin, positions, k_cache, v_cache, page_stride,
                               row_stride, write_pages, tables, M, window, scale, b, h, Hq, Hkv, D, page_tokens, out,
                               bf16))
                failed = 1;
    return failed ? -1 : 0;
}

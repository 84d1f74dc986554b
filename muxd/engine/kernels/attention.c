/* Decode attention over muxd's paged, head-wise KV pool: one query token per
 * sequence, RoPE and the KV write included, in one call per layer.
 *
 * Why it exists: in torch, a decode step's attention is a dozen small ops per
 * layer (gathering the pages, converting, a batched matmul, a softmax,
 * another matmul) whose dispatch costs more than their arithmetic at small
 * batches.
 * Here each (sequence, KV head) walks its page table once and reads only the
 * keys its query may see, page by page (no division per key: at ~40 cycles
 * each, four a key once cost more than the dot products).
 *
 * A head's keys may be split into parts (decode_step.c does, so that two
 * threads share a batch of one sequence and three KV heads evenly): each
 * part yields, per query head, its largest score, the sum of exp(score -
 * largest) and the exp-weighted sum of values, and attention_merge combines
 * the parts as flash-decoding does.
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

/* Where key j of a head lies: its page's slot in the table and its row there. */
typedef struct {
    long page;
    int row;
} cursor_t;

static inline cursor_t cursor_at(long j, int page_tokens) { return (cursor_t){j / page_tokens, (int)(j % page_tokens)}; }

static inline void advance(cursor_t *c, int page_tokens) {
    if (++c->row == page_tokens) {
        c->row = 0;
        ++c->page;
    }
}

static inline const char *row_address(const void *cache, const int64_t *table, long block_stride, cursor_t c,
                                      long page_stride, long row_stride, long es) {
    return (const char *)cache + (table[c.page * block_stride] * page_stride + c.row * row_stride) * es;
}

/* q [D] . row (fp32 or bf16) */
static inline float dot_row(const float *q, const char *row, int D, int bf16) {
    if (D % VF_LANES == 0) {
        vf sum = vf_mul(vf_load(q), vf_load_act(row, 0, bf16));
        for (int d = VF_LANES; d < D; d += VF_LANES) sum = vf_fmadd(vf_load(q + d), vf_load_act(row, d, bf16), sum);
        return vf_sum(sum);
    }
    float sum = 0.f;
    for (int d = 0; d < D; ++d) sum += q[d] * load_value(row, d, bf16);
    return sum;
}

/* out [n] = q [D] . rows [0, n) (fp32 or bf16): four rows' dot products at
 * a time share one shuffle tree (one horizontal sum a row was the K pass's
 * largest cost). */
static inline void dot_rows(const float *q, const char *const *rows, long n, int D, int bf16, float *out) {
    if (D % VF_LANES == 0 && n == 4) {
        vf sum[4];
        for (int i = 0; i < 4; ++i) sum[i] = vf_mul(vf_load(q), vf_load_act(rows[i], 0, bf16));
        for (int d = VF_LANES; d < D; d += VF_LANES) {
            const vf qd = vf_load(q + d);
            for (int i = 0; i < 4; ++i) sum[i] = vf_fmadd(qd, vf_load_act(rows[i], d, bf16), sum[i]);
        }
        vf_sum4(sum[0], sum[1], sum[2], sum[3], out);
        return;
    }
    for (long i = 0; i < n; ++i) out[i] = dot_row(q, rows[i], D, bf16);
}

/* acc [D] = sum over j of p[j] * rows[j] (fp32 or bf16) */
static inline void weighted_rows(const float *p, const char *const *rows, long S, int D, int bf16, float *acc) {
    if (D % VF_LANES == 0) {
        for (int d = 0; d < D; d += VF_LANES) { /* two accumulators: half the FMA latency chain */
            vf even = vf_zero(), odd = vf_zero();
            long j = 0;
            for (; j + 1 < S; j += 2) {
                even = vf_fmadd(vf_set1(p[j]), vf_load_act(rows[j], d, bf16), even);
                odd = vf_fmadd(vf_set1(p[j + 1]), vf_load_act(rows[j + 1], d, bf16), odd);
            }
            if (j < S) even = vf_fmadd(vf_set1(p[j]), vf_load_act(rows[j], d, bf16), even);
            vf_store(acc + d, vf_add(even, odd));
        }
        return;
    }
    memset(acc, 0, sizeof(float) * D);
    for (long j = 0; j < S; ++j)
        for (int d = 0; d < D; ++d) acc[d] += p[j] * load_value(rows[j], d, bf16);
}

static inline void prefetch_rows(const char *k, const char *v, long bytes) {
    for (long off = 0; off < bytes; off += 64) {
        __builtin_prefetch(k + off);
        __builtin_prefetch(v + off);
    }
}

/* Pages lie anywhere in the pool: ask for key j + AHEAD's rows before they
 * are needed (docs/llama-cpp-peer.md has the distances tried). */
#define AHEAD 8

/* RoPE of one head vector x (D values) at one position, as engine/model.py
 * computes it: x * cos + roll(x, D/2) * sin, sin's first half negated in its
 * table; each product and the sum rounded to the dtype, as torch rounds. */
static inline void rope(const void *x, long at, const void *cos, const void *sin, long cos_at, int D, int bf16,
                        float *out) {
    const int half = D / 2;
    for (int d = 0; d < D; ++d) {
        const int partner = d < half ? d + half : d - half;
        float a = rounded(load_value(x, at + d, bf16) * load_value(cos, cos_at + d, bf16), bf16);
        float b = rounded(load_value(x, at + partner, bf16) * load_value(sin, cos_at + d, bf16), bf16);
        out[d] = rounded(a + b, bf16);
    }
}

/* Part p of the keys sequence b's KV head h may see (attention_span, split
 * as attention_parts says), for its G query heads; the last part writes the
 * new token's k and v first, into page `write_page`. `table`: the head's
 * page of each block, block_stride apart. Per query head g: top[g] the
 * largest scaled score, total[g] the sum of exp(score - top), acc[g * D ..]
 * the sum of exp(score - top) * v. Returns 0, or -1 without scratch memory. */
int attention_part(const void *qk, long qk_stride, const void *v, long v_stride, const void *cos, const void *sin,
                   const int64_t *positions, void *k_cache, void *v_cache, long page_stride, long row_stride,
                   const int64_t *table, long block_stride, long write_page, int window, float scale, int b, int h,
                   int Hq, int Hkv, int D, int page_tokens, long p, int bf16, float *top, float *total, float *acc) {
    const int G = Hq / Hkv;
    long j0, j1;
    attention_part_keys(positions, b, window, p, &j0, &j1);
    const long es = bf16 ? 2 : 4, pos = positions[b], S = j1 - j0;
    const long floats = (G * S + G * D + D + 1) / 2 * 2; /* q, scores, k_new; even, so the pointers after are aligned */
    float *q = malloc(sizeof(float) * (size_t)floats + sizeof(char *) * 2 * (size_t)S);
    if (!q) return -1;
    float *scores = q + G * D, *k_new = scores + G * S;
    for (int g = 0; g < G; ++g) rope(qk, b * qk_stride + (long)(h * G + g) * D, cos, sin, b * D, D, bf16, q + g * D);
    if (j1 > pos) { /* the new token: k roped and stored, v stored */
        rope(qk, b * qk_stride + (long)(Hq + h) * D, cos, sin, b * D, D, bf16, k_new);
        const long slot = write_page * page_stride + (pos % page_tokens) * row_stride;
        for (int d = 0; d < D; ++d) {
            store_value(k_cache, slot + d, k_new[d], bf16);
            store_value(v_cache, slot + d, load_value(v, b * v_stride + (long)h * D + d, bf16), bf16);
        }
    }
    const char **keys = (const char **)(q + floats), **values = keys + S; /* each key's K and V row */
    cursor_t at = cursor_at(j0, page_tokens);
    for (long j = 0; j < S; ++j, advance(&at, page_tokens)) {
        keys[j] = row_address(k_cache, table, block_stride, at, page_stride, row_stride, es);
        values[j] = row_address(v_cache, table, block_stride, at, page_stride, row_stride, es);
    }
    for (long j = 0; j < AHEAD && j < S; ++j) prefetch_rows(keys[j], values[j], D * es);
    for (int g = 0; g < G; ++g) top[g] = -INFINITY;
    for (long j = 0; j < S;) {
        const long n = S - j >= 4 ? 4 : 1;
        for (long i = j + AHEAD; i < j + AHEAD + n && i < S; ++i) /* V too: its pass comes next */
            prefetch_rows(keys[i], values[i], D * es);
        for (int g = 0; g < G; ++g) {
            float dots[4];
            dot_rows(q + g * D, keys + j, n, D, bf16, dots);
            for (long i = 0; i < n; ++i) {
                const float s = dots[i] * scale;
                scores[g * S + j + i] = s;
                top[g] = s > top[g] ? s : top[g];
            }
        }
        j += n;
    }
    for (int g = 0; g < G; ++g) {
        total[g] = exp_shifted(scores + g * S, S, top[g], scores + g * S);
        weighted_rows(scores + g * S, values, S, D, bf16, acc + g * D);
    }
    free(q);
    return 0;
}

/* The keys sequence b may see, [*first, *ctx): all up to its new token, the
 * last `window` of them under a sliding window (window > 0). */
void attention_span(const int64_t *positions, int b, int window, long *first, long *ctx) {
    *ctx = positions[b] + 1;
    *first = window > 0 && *ctx > window ? *ctx - window : 0;
}

/* The keys [*j0, *j1) of part p of those sequence b may see. */
void attention_part_keys(const int64_t *positions, int b, int window, long p, long *j0, long *j1) {
    long first, ctx;
    attention_span(positions, b, window, &first, &ctx);
    const long parts = attention_parts(ctx - first);
    *j0 = first + (ctx - first) * p / parts;
    *j1 = first + (ctx - first) * (p + 1) / parts;
}

/* How many parts a head's S keys are split into: one per ATTENTION_PART_KEYS
 * keys, at most ATTENTION_MAX_PARTS. A function of S alone, so that a step
 * computes the same values on any number of threads. Parts are not smaller:
 * each pays its own RoPE of the queries, scratch and merge. */
long attention_parts(long S) {
    long parts = (S + ATTENTION_PART_KEYS - 1) / ATTENTION_PART_KEYS;
    return parts < 1 ? 1 : parts > ATTENTION_MAX_PARTS ? ATTENTION_MAX_PARTS : parts;
}

/* out [D] for one query head from `parts` parts' (top, total, acc) at
 * strides (stride apart, acc D values): the softmax-weighted values. */
void attention_merge(const float *top, const float *total, const float *acc, int parts, long stride, int D,
                     void *out, long out_at, int bf16) {
    float best = -INFINITY, sum = 0.f, weight[parts];
    for (int p = 0; p < parts; ++p) best = top[p * stride] > best ? top[p * stride] : best;
    for (int p = 0; p < parts; ++p) sum += (weight[p] = expf(top[p * stride] - best)) * total[p * stride];
    for (int d = 0; d < D; ++d) {
        float v = 0.f;
        for (int p = 0; p < parts; ++p) v += weight[p] * acc[p * stride + d];
        store_value(out, out_at + d, v / sum, bf16);
    }
}

/* One layer of a decode step's attention (kernels.h: decode_attention_t),
 * each (sequence, KV head) on a thread of its own, its parts merged there.
 * Returns 0, or -1 if scratch memory could not be had. */
int decode_attention(const decode_attention_t *a) {
    int failed = 0;
    const int B = (int)a->B, Hkv = (int)a->Hkv, Hq = (int)a->Hq, D = (int)a->D, G = Hq / Hkv, bf16 = (int)a->bf16;
    const long part_floats = (long)G * (D + 2); /* top [G], total [G], acc [G, D], as decode_step.c lays them */
    #pragma omp parallel for num_threads((int)a->threads) schedule(dynamic) collapse(2) if (B * Hkv >= 8)
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < Hkv; ++h) {
            long first, ctx;
            attention_span(a->positions, b, (int)a->window, &first, &ctx);
            const long parts = attention_parts(ctx - first);
            float *partial = malloc(sizeof(float) * (size_t)(parts * part_floats));
            for (long p = 0; p < parts && partial; ++p) {
                float *part = partial + p * part_floats;
                if (attention_part(a->qk, a->qk_stride, a->v, a->v_stride, a->cos, a->sin, a->positions, a->k_cache,
                                   a->v_cache, a->page_stride, a->row_stride, a->tables + ((long)b * Hkv + h) * a->M, 1,
                                   a->write_pages[b * Hkv + h], (int)a->window, a->scale, b, h, Hq, Hkv, D,
                                   (int)a->page_tokens, p, bf16, part, part + G, part + 2 * G)) {
                    free(partial);
                    partial = NULL;
                }
            }
            if (!partial) {
                failed = 1;
                continue;
            }
            for (int g = 0; g < G; ++g)
                attention_merge(partial + g, partial + G + g, partial + 2 * G + g * D, (int)parts, part_floats, D,
                                a->out, (long)b * Hq * D + (long)(h * G + g) * D, bf16);
            free(partial);
        }
    return failed ? -1 : 0;
}

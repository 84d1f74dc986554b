/* A whole batch-1-ish CPU decode step through the transformer blocks, in one
 * call and one thread team: what llama.cpp does, for muxd's q8 models.
 *
 * Why: with every piece in C already (q8.c, attention.c, norm.c), what is
 * left of a step is the Python between them (about ten calls a layer) and an
 * OpenMP fork/join per linear (121 a step on SmolLM2), which is why a second
 * core gained little. Here the team is forked once per step and its threads
 * meet at a spinning barrier between the steps of a layer: each linear's
 * rows are shared out over the threads (gemv_shared), attention is split
 * over (sequence, KV head, part of its keys), and the norms and element-wise
 * products each thread computes for itself (see decode_layers).
 *
 * Each piece is the same function the per-op path calls, in the same order
 * and with the same roundings, so a step computes what the per-op path does
 * (engine/model.py: Block.forward; tests/engine/test_cpu_kernels.py).
 *
 * plan: per layer, LAYER_FIELDS int64 (pointers as integers):
 *   input norm weight, qkv (weights, scales, bias or 0), o (same), post norm
 *   weight, gate_up (same), down (same), sliding window (0: none).
 * head (or NULL): HEAD_FIELDS int64: the final norm's weight, lm_head (weights,
 *   scales, bias or 0). With it, the same team ends the step with the logits.
 */
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "common.h"
#include "kernels.h"

enum {
    IN_NORM, QKV_W, QKV_S, QKV_B, O_W, O_S, O_B, POST_NORM, GU_W, GU_S, GU_B, DOWN_W, DOWN_S, DOWN_B, WINDOW,
    LAYER_FIELDS
};
enum { HEAD_NORM, HEAD_W, HEAD_S, HEAD_B, HEAD_FIELDS };

/* A spinning barrier without a locked read-modify-write: each thread
 * counts the barriers it has reached in its own cache line (a plain release
 * store) and waits until every line shows as many. An atomic add's full
 * fence waited on the thread's in-flight weight reads. */
typedef struct {
    _Alignas(64) atomic_long reached;
} barrier_slot_t;

typedef struct {
    barrier_slot_t *slots;
    int threads;
} barrier_t;

static void barrier_wait(barrier_t *bar, int t) {
    if (bar->threads == 1) return;
    const long n = atomic_load_explicit(&bar->slots[t].reached, memory_order_relaxed) + 1;
    atomic_store_explicit(&bar->slots[t].reached, n, memory_order_release);
    for (int i = 0; i < bar->threads; ++i)
        while (atomic_load_explicit(&bar->slots[i].reached, memory_order_acquire) < n) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
}

/* [lo, hi) of n items for thread t of T, in whole units of `unit` items. */
static void share(long n, long unit, int t, int T, long *lo, long *hi) {
    long units = (n + unit - 1) / unit;
    *lo = units * t / T * unit;
    *hi = units * (t + 1) / T * unit;
    if (*hi > n) *hi = n;
    if (*lo > n) *lo = n;
}

/* Rows are shared out, and taken over, in grains of this many (4 q8 tiles). */
#define GRAIN 16

/* Work sharing of a linear's rows, as ggml shares its matmuls' chunks: each
 * thread starts on its static share and, done with it, takes the back half
 * of what is left of the share furthest behind, again until none is left.
 *
 * Why: the VM's two vCPUs at times stream at different speeds (on two core
 * complexes one's GEMVs ran 20-50 % slower), and with static shares the
 * faster one waited at every barrier; a share split by rates measured in
 * earlier steps was no help (docs/llama-cpp-peer.md), as the rates change.
 *
 * The owner of a slot writes only `next` (plain stores: no fence in its
 * loop) and reads `end` before each grain; a taker lowers `end` by
 * compare-and-swap, so the rows taken are exactly [new end, old end). An
 * owner that read `end` just before it fell may compute a grain its taker
 * computes too: both write the same values (each thread's quantized copy of
 * the input is the same), and the barrier ending the linear orders them. */
typedef struct {
    _Alignas(64) atomic_long next; /* the owner's next row */
    atomic_long end;               /* its share's end */
    atomic_long epoch;             /* which linear of the step the two describe */
} share_slot_t;

typedef struct { /* the activations' quantized copy, shared by the team */
    uint8_t *abs;
    uint64_t *sign;
    float *scale;
} quantized_t;

/* Rows [lo, hi) of y [M, N] = x . W^T from x's quantized copy (q8.c's
 * tiles); W's weights, scales and bias (or 0) are at linear[0..2]. */
static void gemv_rows(const quantized_t *q, int M, int K, const int64_t *linear, int N, void *y, int bf16, long lo,
                      long hi) {
    const int Kp = (K + Q8_CHUNK - 1) / Q8_CHUNK * Q8_CHUNK;
    const int8_t *w = (const int8_t *)(intptr_t)linear[0];
    const uint16_t *s = (const uint16_t *)(intptr_t)linear[1];
    const float *bias = (const float *)(intptr_t)linear[2];
    for (long n0 = lo; n0 < hi; n0 += Q8_ROWS)
        for (int m0 = 0; m0 < M; m0 += Q8_XROWS)
            q8_tile(q->abs, q->sign, q->scale, m0, M - m0 < Q8_XROWS ? M - m0 : Q8_XROWS, w, s, bias, N, Kp, (int)n0,
                    N - n0 < Q8_ROWS ? (int)(N - n0) : Q8_ROWS, y, bf16);
}

/* x [M, K] quantized into q (every thread its own copy: cheaper than a barrier). */
static void quantize(const void *x, int M, int K, quantized_t *q, int bf16) {
    const int Kp = (K + Q8_CHUNK - 1) / Q8_CHUNK * Q8_CHUNK, nc = Kp / Q8_CHUNK, ng = Kp / Q8_GROUP;
    const long es = bf16 ? 2 : 4;
    for (long m = 0; m < M; ++m)
        q8_quantize_row((const char *)x + m * K * es, bf16, K, Kp, q->abs + m * Kp, q->sign + m * nc, q->scale + m * ng);
}

/* Slice k of n of the first `limit` bytes of this thread's share of a
 * linear's weights, and of the matching scales, asked for ahead of the
 * linear (into L2: it runs soon). */
static void prefetch_share(const int64_t *layer, int field, int N, int K, int t, int T, long limit, long k, long n) {
    const long Kp = (K + Q8_CHUNK - 1) / Q8_CHUNK * Q8_CHUNK;
    long lo, hi;
    share(N, GRAIN, t, T, &lo, &hi);
    const long bytes = (hi - lo) * Kp < limit ? (hi - lo) * Kp : limit, from = bytes * k / n, to = bytes * (k + 1) / n;
    const char *w = (const char *)(intptr_t)layer[field] + lo * Kp;
    const char *s = (const char *)(intptr_t)layer[field + 1] + lo * (Kp / Q8_GROUP) * 2;
    for (long at = from / 64 * 64; at < to; at += 64) __builtin_prefetch(w + at);
    for (long at = from / 16 / 64 * 64; at < to / 16; at += 64) __builtin_prefetch(s + at); /* 2 bytes per 32 */
}

/* While a thread attends, memory would idle: it asks for the weights that
 * come next, its share of the o projection and this much of its gate/up
 * share, a slice before each of its attention items (4 % off a SmolLM2
 * decode step; more of gate/up gained nothing). */
#define GATE_UP_AHEAD (256L << 10)

/* Rows of y [M, N] = x . W^T (W at linear[0..2]) by the team, shared out
 * as share_slot_t says; `epoch` numbers the linear within the step (every
 * thread calls the same linears in the same order). No barrier. */
static void gemv_shared(const quantized_t *q, int M, int K, const int64_t *linear, int N, void *y, int bf16,
                        share_slot_t *slots, long epoch, int t, int T) {
    long lo, hi;
    share(N, GRAIN, t, T, &lo, &hi);
    share_slot_t *own = &slots[t];
    atomic_store_explicit(&own->next, lo, memory_order_relaxed);
    atomic_store_explicit(&own->end, hi, memory_order_relaxed);
    atomic_store_explicit(&own->epoch, epoch, memory_order_release);
    for (long n = lo; n < atomic_load_explicit(&own->end, memory_order_relaxed); n += GRAIN) {
        atomic_store_explicit(&own->next, n + GRAIN, memory_order_relaxed);
        gemv_rows(q, M, K, linear, N, y, bf16, n, n + GRAIN < N ? n + GRAIN : N);
    }
    for (;;) { /* take over the back half of the share furthest behind */
        share_slot_t *behind = NULL;
        long end = 0, next = 0;
        for (int v = 0; v < T; ++v) {
            if (v == t || atomic_load_explicit(&slots[v].epoch, memory_order_acquire) != epoch) continue;
            const long e = atomic_load_explicit(&slots[v].end, memory_order_relaxed);
            const long n = atomic_load_explicit(&slots[v].next, memory_order_relaxed);
            if (e - n > end - next) behind = &slots[v], end = e, next = n;
        }
        if (!behind) return;
        /* A stale `next` costs at most a grain computed twice; the swap checks `end`. */
        const long from = next + (end - next + GRAIN - 1) / GRAIN / 2 * GRAIN; /* the owner keeps the smaller half */
        if (atomic_compare_exchange_strong_explicit(&behind->end, &end, from, memory_order_relaxed,
                                                    memory_order_relaxed))
            gemv_rows(q, M, K, linear, N, y, bf16, from, end);
    }
}

/* y [M, N] = x [M, K] . W^T by the whole team: each thread quantizes x for
 * itself and computes rows of W, shared out by gemv_shared; a barrier ends it. */
static void linear(const void *x, int M, int K, const int64_t *layer, int field, int N, quantized_t *q, void *y,
                   int bf16, share_slot_t *slots, long *epoch, int t, int T, barrier_t *bar) {
    quantize(x, M, K, q, bf16);
    gemv_shared(q, M, K, layer + field, N, y, bf16, slots, ++*epoch, t, T);
    barrier_wait(bar, t);
}

/* act [B, I] = silu(gate) * up from wide [B, 2I] = (gate, up), each rounded
 * as torch rounds. The exponentials go 16 at a time (common.h's exp16):
 * with expf, one value at a time, this took 0.2-0.3 ms of a SmolLM2 batch-1
 * step on every thread (each computes all of act for its quantized copy). */
static void silu_times_up(const void *wide, long B, long I, void *act, int bf16) {
    for (long b = 0; b < B; ++b)
        for (long k0 = 0; k0 < I; k0 += 16) {
            const long n = I - k0 < 16 ? I - k0 : 16;
            float gate[16], e[16];
            for (long j = 0; j < n; ++j) gate[j] = -load_value(wide, b * 2 * I + k0 + j, bf16);
            exp_shifted(gate, n, 0.f, e); /* e = exp(-gate) */
            for (long j = 0; j < n; ++j) {
                const float silu = rounded(-gate[j] / (1.f + e[j]), bf16);
                store_value(act, b * I + k0 + j, silu * load_value(wide, b * 2 * I + I + k0 + j, bf16), bf16);
            }
        }
}

/* Ask for the K and V rows this thread's attention items of layer l will
 * read (the cached keys: the new token's are not written yet), into L2, a
 * layer ahead, while the MLP streams its weights: the rows lie in pages
 * anywhere in the pool, and fetched only when attention reads them each
 * cost a trip to L3 or memory. On SmolLM2 at batch 1: -0.28 and -0.10 ms
 * median in two runs of 20 paired steps, 28 of 40 faster. */
/* A layer's attention work items: (sequence, KV head, part of its keys), in
 * that order. Fills each sequence's parts per head and its first item;
 * returns how many there are. */
static long attention_items(const int64_t *positions, int B, int Hkv, int window, long *parts, long *offset) {
    long items = 0;
    for (int b = 0; b < B; ++b) {
        long first, ctx;
        attention_span(positions, b, window, &first, &ctx);
        parts[b] = attention_parts(ctx - first);
        offset[b] = items;
        items += (long)Hkv * parts[b];
    }
    return items;
}

/* Sequence b's item i as (KV head, part); b advances to the item's sequence. */
static void attention_item(long i, const long *parts, const long *offset, int Hkv, long *b, long *head, long *p) {
    while (i >= offset[*b] + (long)Hkv * parts[*b]) ++*b;
    *head = (i - offset[*b]) / parts[*b];
    *p = (i - offset[*b]) % parts[*b];
}

/* The pages of sequence b's KV head `head` in layer l, one per block,
 * L * Hkv apart in block_tables [B, M, L, Hkv]. */
static inline const int64_t *head_table(const int64_t *block_tables, long b, int l, long head, int M, int L, int Hkv) {
    return block_tables + b * M * L * Hkv + (long)l * Hkv + head;
}

static void prefetch_attention(int l, int L, int B, int Hkv, int D, const int64_t *positions, int window,
                               const char *k_cache, const char *v_cache, long page_stride, long row_stride,
                               const int64_t *block_tables, int M, int page_tokens, long es, long *parts,
                               long *offset, int t, int T) {
    long lo, hi;
    share(attention_items(positions, B, Hkv, window, parts, offset), 1, t, T, &lo, &hi);
    const long block_stride = (long)L * Hkv, bytes = (long)D * es;
    for (long i = lo, b = 0; i < hi; ++i) {
        long head, p, j0, j1;
        attention_item(i, parts, offset, Hkv, &b, &head, &p);
        attention_part_keys(positions, (int)b, window, p, &j0, &j1);
        const int64_t *table = head_table(block_tables, b, l, head, M, L, Hkv);
        for (long j = j0; j < j1 && j < positions[b]; ++j) { /* the new token's row is not written yet */
            const long at = (table[j / page_tokens * block_stride] * page_stride + j % page_tokens * row_stride) * es;
            for (long off = 0; off < bytes; off += 64) {
                __builtin_prefetch(k_cache + at + off, 0, 2);
                __builtin_prefetch(v_cache + at + off, 0, 2);
            }
        }
    }
}

static int alloc_quantized(quantized_t *q, int M, long Kp) {
    q->abs = malloc((size_t)M * Kp);
    q->sign = malloc((size_t)M * (Kp / Q8_CHUNK) * 8);
    q->scale = malloc((size_t)M * (Kp / Q8_GROUP) * 4);
    return q->abs && q->sign && q->scale;
}

static void free_quantized(quantized_t *q) {
    free(q->abs);
    free(q->sign);
    free(q->scale);
}

/* x [B, H] (bf16 if bf16, else fp32) goes through layers [0, L) in place.
 * cos, sin [B, D]; positions [B]; block_tables [B, M, L, Hkv] (each
 * sequence's pages, block after block, as the runner lists them: the new
 * token's page is its block's); the caches as in attention.c. Returns 0, or
 * -1 if scratch memory could not be had.
 *
 * What the team shares: each linear's output and the attention's. What
 * every thread computes for itself, from those: the residual stream, the
 * norms, SiLU times up, and the quantized inputs of the next linear. The
 * duplicated work is a few thousand values a layer; in exchange a layer has
 * five barriers (one after each linear and one after attention).
 *
 * With `head`, each thread then norms the final stream and computes
 * logits [B, V] (fp32, rounded to bf16 first if bf16, as the per-op path's
 * bf16 lm_head and its cast round) with the team, shared out as a linear's
 * rows; then, over its static share of each row, the argmax and
 * log-normaliser (sampling.c's, merged into argmax [B] and lse [B]): the
 * head's read joins the same team, and a thread reads only the logits
 * another took over from its share (at 49k values a row, reading the other
 * core's whole half cost more than the sums). */
int decode_layers(void *x, int B, const int64_t *plan, int L, int H, int I, int Hq, int Hkv, int D, float eps,
                  int bf16, const void *cos, const void *sin, const int64_t *positions, void *k_cache, void *v_cache,
                  long page_stride, long row_stride, const int64_t *block_tables, int M, int page_tokens, float scale,
                  const int64_t *head, int V, float *logits, int64_t *argmax, float *lse,
                  int threads) {
    const long es = bf16 ? 2 : 4, QKV = (long)(Hq + 2 * Hkv) * D, widest = 2L * I > QKV ? 2L * I : QKV;
    const long Kp = ((I > H ? I : H) + Q8_CHUNK - 1) / Q8_CHUNK * Q8_CHUNK;
    const int G = Hq / Hkv;
    const long part_floats = (long)G * (D + 2);                          /* top [G], total [G], acc [G, D] */
    char *wide = malloc((size_t)B * widest * es);
    float *partial = malloc(sizeof(float) * (size_t)B * Hkv * ATTENTION_MAX_PARTS * part_floats);
    char *out = malloc((size_t)B * H * es); /* the o and down projections */
    barrier_t bar = {aligned_alloc(64, sizeof(barrier_slot_t) * (size_t)(threads > 0 ? threads : 1)), 1};
    share_slot_t *slots = aligned_alloc(64, sizeof(share_slot_t) * (size_t)(threads > 0 ? threads : 1));
    argmax_lse_t *row_parts = malloc(sizeof(argmax_lse_t) * (size_t)B * (threads > 0 ? threads : 1));
    long *row_offsets = malloc(sizeof(long) * (size_t)(threads > 0 ? threads : 1));
    atomic_int errors = !wide || !partial || !out || !bar.slots || !slots || !row_parts || !row_offsets;
    if (!errors) {
        for (int i = 0; i < threads; ++i) {
            atomic_init(&bar.slots[i].reached, 0);
            atomic_init(&slots[i].next, 0);
            atomic_init(&slots[i].end, 0);
            atomic_init(&slots[i].epoch, 0);
        }
        #pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num(), T = omp_get_num_threads();
            #pragma omp single
            bar.threads = T; /* the implied barrier publishes it */
            /* this thread's own: residual stream, normed rows, SiLU * up, quantized input */
            char *stream = malloc((size_t)B * H * es), *h = malloc((size_t)B * H * es), *act = malloc((size_t)B * I * es);
            char *attn = malloc((size_t)B * Hq * D * es);
            long *parts = malloc(sizeof(long) * 2 * (size_t)B), *offset = parts + B; /* per sequence: its heads' parts, first item */
            quantized_t q;
            int ok = stream && h && act && attn && parts && alloc_quantized(&q, B, Kp);
            if (!ok) atomic_store(&errors, 1);
            #pragma omp barrier
            if (!atomic_load(&errors)) {
                memcpy(stream, x, (size_t)B * H * es);
                long lo, hi, epoch = 0; /* the linears this thread has begun */
                for (int l = 0; l < L; ++l) {
                    const int64_t *layer = plan + (long)l * LAYER_FIELDS;
                    for (long b = 0; b < B; ++b)
                        norm_row(stream + b * H * es, NULL, (const void *)(intptr_t)layer[IN_NORM], eps, H, NULL,
                                 h + b * H * es, bf16);
                    linear(h, B, H, layer, QKV_W, (int)QKV, &q, wide, bf16, slots, &epoch, t, T, &bar);
                    share(attention_items(positions, B, Hkv, (int)layer[WINDOW], parts, offset), 1, t, T, &lo, &hi);
                    for (long i = lo, b = 0; i < hi; ++i) {
                        prefetch_share(layer, O_W, H, Hq * D, t, T, LONG_MAX, i - lo, hi - lo);
                        prefetch_share(layer, GU_W, 2 * I, H, t, T, GATE_UP_AHEAD, i - lo, hi - lo);
                        long head, p;
                        attention_item(i, parts, offset, Hkv, &b, &head, &p);
                        float *part = partial + i * part_floats;
                        const long block_stride = (long)L * Hkv;
                        const int64_t *table = head_table(block_tables, b, l, head, M, L, Hkv);
                        const long write_page = table[positions[b] / page_tokens * block_stride];
                        if (attention_part(wide, QKV, wide + (long)(Hq + Hkv) * D * es, QKV, cos, sin, positions,
                                           k_cache, v_cache, page_stride, row_stride, table, block_stride, write_page,
                                           (int)layer[WINDOW], scale, (int)b, (int)head, Hq, Hkv, D, page_tokens, p,
                                           bf16, part, part + G, part + 2 * G))
                            atomic_store(&errors, 1);
                    }
                    barrier_wait(&bar, t);
                    for (long i = 0; i < (long)B * Hq; ++i) { /* each thread merges the parts for itself */
                        const long b = i / Hq, head = i % Hq / G, g = i % G;
                        const float *first_part = partial + (offset[b] + head * parts[b]) * part_floats;
                        attention_merge(first_part + g, first_part + G + g, first_part + 2 * G + g * D, parts[b],
                                        part_floats, D, attn, i * D, bf16);
                    }
                    linear(attn, B, Hq * D, layer, O_W, H, &q, out, bf16, slots, &epoch, t, T, &bar);
                    for (long b = 0; b < B; ++b) /* stream += o, then the post-attention norm */
                        norm_row(stream + b * H * es, out + b * H * es, (const void *)(intptr_t)layer[POST_NORM], eps,
                                 H, stream + b * H * es, h + b * H * es, bf16);
                    linear(h, B, H, layer, GU_W, 2 * I, &q, wide, bf16, slots, &epoch, t, T, &bar);
                    if (l + 1 < L) /* parts and offset are this layer's no more: the merge above has read them */
                        prefetch_attention(l + 1, L, B, Hkv, D, positions, (int)layer[LAYER_FIELDS + WINDOW], k_cache,
                                           v_cache, page_stride, row_stride, block_tables, M, page_tokens, es, parts,
                                           offset, t, T);
                    silu_times_up(wide, B, I, act, bf16);
                    /* `out` is read above (norm) by every thread before this
                     * linear writes it: the barrier ending the gate_up
                     * linear lies between. */
                    linear(act, B, I, layer, DOWN_W, H, &q, out, bf16, slots, &epoch, t, T, &bar);
                    for (long i = 0; i < (long)B * H; ++i)
                        store_value(stream, i, load_value(stream, i, bf16) + load_value(out, i, bf16), bf16);
                }
                if (t == 0) memcpy(x, stream, (size_t)B * H * es);
                if (head) {
                    for (long b = 0; b < B; ++b)
                        norm_row(stream + b * H * es, NULL, (const void *)(intptr_t)head[HEAD_NORM], eps, H, NULL,
                                 h + b * H * es, bf16);
                    quantize(h, B, H, &q, bf16);
                    gemv_shared(&q, B, H, head + HEAD_W, V, logits, 0, slots, ++epoch, t, T);
                    barrier_wait(&bar, t); /* the rows another thread took over are written */
                    share(V, GRAIN, t, T, &lo, &hi);
                    row_offsets[t] = lo;
                    for (long b = 0; b < B; ++b) {
                        float *row = logits + b * V;
                        if (bf16)
                            for (long n = lo; n < hi; ++n) row[n] = rounded(row[n], 1);
                        if (hi > lo) argmax_lse_part(row + lo, hi - lo, &row_parts[b * T + t]);
                        else row_parts[b * T + t] = (argmax_lse_t){0, -INFINITY, 0.f, 0};
                    }
                }
            }
            free(stream); free(h); free(act); free(attn); free(parts);
            if (ok) free_quantized(&q);
        }
    }
    if (head && !atomic_load(&errors))
        for (long b = 0; b < B; ++b) argmax_lse_merge(row_parts + b * bar.threads, row_offsets, bar.threads, argmax + b, lse + b);
    free(wide); free(partial); free(out); free(bar.slots); free(slots); free(row_parts); free(row_offsets);
    return atomic_load(&errors) ? -1 : 0;
}

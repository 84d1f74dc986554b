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
 * The model and the batch come as two structs (kernels.h: decode_model_t,
 * decode_batch_t), mirrored in engine/cpu_kernels.py.
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
#elif defined(__aarch64__)
            __asm__ volatile("yield");
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
 * Why: a VM's vCPUs at times stream at different speeds (on two core
 * complexes of an AMD CPU), and with static shares the faster one waited
 * at every barrier; a share split by rates measured in
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

/* Rows [lo, hi) of y [M, N] = x . W^T from x's quantized copy (q8.c's tiles). */
static void gemv_rows(const q8_act_t *q, int M, const q8_weight_t *w, void *y, int bf16, long lo, long hi) {
    const long N = w->N;
    for (long n0 = lo; n0 < hi; n0 += Q8_ROWS)
        for (int m0 = 0; m0 < M; m0 += Q8_XROWS)
            q8_tile(q, m0, M - m0 < Q8_XROWS ? M - m0 : Q8_XROWS, w, (int)n0, N - n0 < Q8_ROWS ? (int)(N - n0) : Q8_ROWS,
                    y, bf16);
}

/* Slice k of n of the first `limit` bytes of this thread's share of a
 * linear's weights, and of the matching scales, asked for ahead of the
 * linear (into L2: it runs soon). */
static void prefetch_share(const q8_weight_t *lin, int t, int T, long limit, long k, long n) {
    const long Kp = q8_padded(lin->K);
    long lo, hi;
    share(lin->N, GRAIN, t, T, &lo, &hi);
    const long bytes = (hi - lo) * Kp < limit ? (hi - lo) * Kp : limit, from = bytes * k / n, to = bytes * (k + 1) / n;
    const char *w = (const char *)lin->q + lo * Kp;
    const char *s = (const char *)lin->scale + lo * (Kp / Q8_GROUP) * 2;
    for (long at = from / 64 * 64; at < to; at += 64) __builtin_prefetch(w + at);
    for (long at = from / 16 / 64 * 64; at < to / 16; at += 64) __builtin_prefetch(s + at); /* 2 bytes per 32 */
}

/* While a thread attends, memory would idle: it asks for the weights that
 * come next, its share of the o projection and this much of its gate/up
 * share, a slice before each of its attention items. */
#define GATE_UP_AHEAD (256L << 10)

/* Rows of y [M, N] = x . W^T (W at linear[0..2]) by the team, shared out
 * as share_slot_t says; `epoch` numbers the linear within the step (every
 * thread calls the same linears in the same order). No barrier. */
static void gemv_shared(const q8_act_t *q, int M, const q8_weight_t *w, void *y, int bf16, share_slot_t *slots,
                        long epoch, int t, int T) {
    const long N = w->N;
    long lo, hi;
    share(N, GRAIN, t, T, &lo, &hi);
    share_slot_t *own = &slots[t];
    atomic_store_explicit(&own->next, lo, memory_order_relaxed);
    atomic_store_explicit(&own->end, hi, memory_order_relaxed);
    atomic_store_explicit(&own->epoch, epoch, memory_order_release);
    for (long n = lo; n < atomic_load_explicit(&own->end, memory_order_relaxed); n += GRAIN) {
        atomic_store_explicit(&own->next, n + GRAIN, memory_order_relaxed);
        gemv_rows(q, M, w, y, bf16, n, n + GRAIN < N ? n + GRAIN : N);
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
            gemv_rows(q, M, w, y, bf16, from, end);
    }
}

/* act [B, I] = silu(gate) * up from wide [B, 2I] = (gate, up), each rounded
 * as torch rounds. The exponentials go a vector at a time (common.h's
 * exp_shifted): every thread computes all of act for its quantized copy. */
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

/* Ask for the K and V rows this thread's attention items of layer l will
 * read (the cached keys: the new token's are not written yet), into L2, a
 * layer ahead, while the MLP streams its weights: the rows lie in pages
 * anywhere in the pool, and fetched only when attention reads them each
 * cost a trip to L3 or memory. */
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

/* What the team shares for one step, and what each thread holds for itself. */
typedef struct {
    barrier_t bar;
    share_slot_t *slots;
    char *wide;              /* [B, max(QKV, 2I)]: the qkv and gate_up projections */
    char *out;               /* [B, H]: the o and down projections */
    float *partial;          /* attention parts: [items] x (top [G], total [G], acc [G, D]) */
    argmax_lse_t *row_parts; /* [B, T] */
    long *row_offsets;       /* [T] */
    atomic_int errors;
} shared_t;

typedef struct {
    int t, T;
    long epoch; /* the linears this thread has begun */
    char *stream, *h, *act, *attn; /* residual stream, normed rows, SiLU * up, attention output */
    long *parts, *offset;          /* per sequence: its heads' parts, its first attention item */
    q8_act_t q;                    /* the quantized input of the next linear */
} thread_t;

/* y = x . W^T by the whole team: each thread quantizes x for itself and
 * computes rows of W, shared out by gemv_shared; a barrier ends it. */
static void linear(shared_t *sh, thread_t *me, const void *x, long B, const q8_weight_t *w, void *y, int bf16) {
    q8_quantize_rows(x, bf16, (int)B, (int)w->K, &me->q);
    gemv_shared(&me->q, (int)B, w, y, bf16, sh->slots, ++me->epoch, me->t, me->T);
    barrier_wait(&sh->bar, me->t);
}

/* This thread's attention items of layer l (RoPE, KV write, its parts of
 * the keys), then, after the barrier, every head's parts merged into attn. */
static void attend(const decode_model_t *m, const decode_batch_t *s, shared_t *sh, thread_t *me, int l) {
    const decode_layer_t *layer = &m->layers[l];
    const long es = m->bf16 ? 2 : 4, G = m->Hq / m->Hkv, QKV = (m->Hq + 2 * m->Hkv) * m->D;
    const long part_floats = G * (m->D + 2), block_stride = m->L * m->Hkv;
    long lo, hi;
    share(attention_items(s->positions, (int)s->B, (int)m->Hkv, (int)layer->window, me->parts, me->offset), 1, me->t,
          me->T, &lo, &hi);
    for (long i = lo, b = 0; i < hi; ++i) {
        prefetch_share(&layer->o, me->t, me->T, LONG_MAX, i - lo, hi - lo);
        prefetch_share(&layer->gate_up, me->t, me->T, GATE_UP_AHEAD, i - lo, hi - lo);
        long head, p;
        attention_item(i, me->parts, me->offset, (int)m->Hkv, &b, &head, &p);
        float *part = sh->partial + i * part_floats;
        const int64_t *table = head_table(s->block_tables, b, l, head, (int)s->M, (int)m->L, (int)m->Hkv);
        const long write_page = table[s->positions[b] / s->page_tokens * block_stride];
        if (attention_part(sh->wide, QKV, sh->wide + (m->Hq + m->Hkv) * m->D * es, QKV, s->cos, s->sin, s->positions,
                           s->k_cache, s->v_cache, s->page_stride, s->row_stride, table, block_stride, write_page,
                           (int)layer->window, m->scale, (int)b, (int)head, (int)m->Hq, (int)m->Hkv, (int)m->D,
                           (int)s->page_tokens, p, (int)m->bf16, part, part + G, part + 2 * G))
            atomic_store(&sh->errors, 1);
    }
    barrier_wait(&sh->bar, me->t);
    for (long i = 0; i < s->B * m->Hq; ++i) { /* each thread merges the parts for itself */
        const long b = i / m->Hq, head = i % m->Hq / G, g = i % G;
        const float *first_part = sh->partial + (me->offset[b] + head * me->parts[b]) * part_floats;
        attention_merge(first_part + g, first_part + G + g, first_part + 2 * G + g * m->D, (int)me->parts[b],
                        part_floats, (int)m->D, me->attn, i * m->D, (int)m->bf16);
    }
}

/* Layer l of the step: five linears and attention, five barriers. */
static void block(const decode_model_t *m, const decode_batch_t *s, shared_t *sh, thread_t *me, int l) {
    const decode_layer_t *layer = &m->layers[l];
    const long B = s->B, H = m->H, es = m->bf16 ? 2 : 4;
    const int bf16 = (int)m->bf16;
    for (long b = 0; b < B; ++b)
        norm_row(me->stream + b * H * es, NULL, layer->input_norm, m->eps, (int)H, NULL, me->h + b * H * es, bf16);
    linear(sh, me, me->h, B, &layer->qkv, sh->wide, bf16);
    attend(m, s, sh, me, l);
    linear(sh, me, me->attn, B, &layer->o, sh->out, bf16);
    for (long b = 0; b < B; ++b) /* stream += o, then the post-attention norm */
        norm_row(me->stream + b * H * es, sh->out + b * H * es, layer->post_norm, m->eps, (int)H, me->stream + b * H * es,
                 me->h + b * H * es, bf16);
    linear(sh, me, me->h, B, &layer->gate_up, sh->wide, bf16);
    if (l + 1 < m->L) /* parts and offset are this layer's no more: the merge has read them */
        prefetch_attention(l + 1, (int)m->L, (int)B, (int)m->Hkv, (int)m->D, s->positions, (int)layer[1].window,
                           s->k_cache, s->v_cache, s->page_stride, s->row_stride, s->block_tables, (int)s->M,
                           (int)s->page_tokens, es, me->parts, me->offset, me->t, me->T);
    silu_times_up(sh->wide, B, m->I, me->act, bf16);
    /* `out` is read above (norm) by every thread before this linear writes
     * it: the barrier ending the gate_up linear lies between. */
    linear(sh, me, me->act, B, &layer->down, sh->out, bf16);
    for (long i = 0; i < B * H; ++i)
        store_value(me->stream, i, load_value(me->stream, i, bf16) + load_value(sh->out, i, bf16), bf16);
}

/* The final norm, this thread's share of the logits (shared out as a
 * linear's rows), and over its static share of each row the argmax and
 * log-normaliser's part (sampling.c's, merged after the team ends). */
static void head(const decode_model_t *m, const decode_batch_t *s, shared_t *sh, thread_t *me) {
    const long B = s->B, H = m->H, V = m->V, es = m->bf16 ? 2 : 4;
    for (long b = 0; b < B; ++b)
        norm_row(me->stream + b * H * es, NULL, m->final_norm, m->eps, (int)H, NULL, me->h + b * H * es, (int)m->bf16);
    q8_quantize_rows(me->h, (int)m->bf16, (int)B, (int)H, &me->q);
    gemv_shared(&me->q, (int)B, m->lm_head, s->logits, 0, sh->slots, ++me->epoch, me->t, me->T);
    barrier_wait(&sh->bar, me->t); /* the rows another thread took over are written */
    long lo, hi;
    share(V, GRAIN, me->t, me->T, &lo, &hi);
    sh->row_offsets[me->t] = lo;
    for (long b = 0; b < B; ++b) {
        float *row = s->logits + b * V;
        if (m->bf16)
            for (long n = lo; n < hi; ++n) row[n] = rounded(row[n], 1);
        argmax_lse_t *part = &sh->row_parts[b * me->T + me->t];
        if (hi > lo) argmax_lse_part(row + lo, hi - lo, part);
        else *part = (argmax_lse_t){0, -INFINITY, 0.f, 0};
    }
}

static int thread_alloc(thread_t *me, const decode_model_t *m, long B) {
    const long es = m->bf16 ? 2 : 4;
    me->stream = malloc((size_t)(B * m->H * es));
    me->h = malloc((size_t)(B * m->H * es));
    me->act = malloc((size_t)(B * m->I * es));
    me->attn = malloc((size_t)(B * m->Hq * m->D * es));
    me->parts = malloc(sizeof(long) * 2 * (size_t)B);
    me->offset = me->parts ? me->parts + B : NULL;
    const int quantized = q8_act_alloc(&me->q, (int)B, q8_padded(m->I > m->H ? m->I : m->H));
    return me->stream && me->h && me->act && me->attn && me->parts && quantized;
}

static void thread_free(thread_t *me) {
    free(me->stream), free(me->h), free(me->act), free(me->attn), free(me->parts);
    q8_act_free(&me->q);
}

static int shared_alloc(shared_t *sh, const decode_model_t *m, long B, int threads) {
    const long es = m->bf16 ? 2 : 4, QKV = (m->Hq + 2 * m->Hkv) * m->D, widest = 2 * m->I > QKV ? 2 * m->I : QKV;
    const long part_floats = m->Hq / m->Hkv * (m->D + 2);
    sh->wide = malloc((size_t)(B * widest * es));
    sh->out = malloc((size_t)(B * m->H * es));
    sh->partial = malloc(sizeof(float) * (size_t)(B * m->Hkv * ATTENTION_MAX_PARTS * part_floats));
    sh->bar = (barrier_t){aligned_alloc(64, sizeof(barrier_slot_t) * (size_t)threads), 1};
    sh->slots = aligned_alloc(64, sizeof(share_slot_t) * (size_t)threads);
    sh->row_parts = malloc(sizeof(argmax_lse_t) * (size_t)(B * threads));
    sh->row_offsets = malloc(sizeof(long) * (size_t)threads);
    const int ok = sh->wide && sh->out && sh->partial && sh->bar.slots && sh->slots && sh->row_parts && sh->row_offsets;
    for (int i = 0; ok && i < threads; ++i) {
        atomic_init(&sh->bar.slots[i].reached, 0);
        atomic_init(&sh->slots[i].next, 0);
        atomic_init(&sh->slots[i].end, 0);
        atomic_init(&sh->slots[i].epoch, 0);
    }
    atomic_init(&sh->errors, !ok);
    return ok;
}

static void shared_free(shared_t *sh) {
    free(sh->wide), free(sh->out), free(sh->partial), free(sh->bar.slots), free(sh->slots), free(sh->row_parts);
    free(sh->row_offsets);
}

/* A decode step of model m for batch s: s->x [B, H] goes through every
 * block in place and, where s->logits and m->lm_head are set, on through
 * the final norm and lm_head into s->logits [B, V] (fp32, rounded to bf16
 * first in bf16, as the per-op path's bf16 lm_head and its cast round),
 * s->argmax [B] and s->lse [B]. Returns 0, or -1 if scratch memory could
 * not be had.
 *
 * What the team shares: each linear's output and the attention's. What
 * every thread computes for itself, from those: the residual stream, the
 * norms, SiLU times up, and the quantized inputs of the next linear: a few
 * thousand values a layer, in exchange for five barriers a layer. A thread
 * reads only the logits another took over from its share (at 49k values a
 * row, reading the other core's whole half cost more than the sums). */
int decode_layers(const decode_model_t *m, const decode_batch_t *s) {
    const int threads = s->threads > 0 ? (int)s->threads : 1, with_head = s->logits && m->lm_head && m->final_norm;
    const long B = s->B, es = m->bf16 ? 2 : 4;
    shared_t sh;
    if (shared_alloc(&sh, m, B, threads)) {
        #pragma omp parallel num_threads(threads)
        {
            thread_t me = {.t = omp_get_thread_num(), .T = omp_get_num_threads()};
            #pragma omp single
            sh.bar.threads = me.T; /* the implied barrier publishes it */
            if (!thread_alloc(&me, m, B)) atomic_store(&sh.errors, 1);
            #pragma omp barrier
            if (!atomic_load(&sh.errors)) {
                memcpy(me.stream, s->x, (size_t)(B * m->H * es));
                for (int l = 0; l < m->L; ++l) block(m, s, &sh, &me, l);
                if (me.t == 0) memcpy(s->x, me.stream, (size_t)(B * m->H * es));
                if (with_head) head(m, s, &sh, &me);
            }
            thread_free(&me);
        }
    }
    const int failed = atomic_load(&sh.errors);
    if (with_head && !failed)
        for (long b = 0; b < B; ++b)
            argmax_lse_merge(sh.row_parts + b * sh.bar.threads, sh.row_offsets, sh.bar.threads, s->argmax + b, s->lse + b);
    shared_free(&sh);
    return failed ? -1 : 0;
}

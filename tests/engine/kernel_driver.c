/* Runs every C kernel on fixed pseudo-random inputs and prints the results as
 * one JSON object, for tests/engine/test_kernel_builds.py: built once per
 * instruction set (natively, or cross-compiled for ARM64 and run under
 * qemu-user), its output is compared with the portable build's.
 *
 * Built with the kernel sources: cc -fopenmp -I muxd/engine/kernels
 * kernel_driver.c q8.c attention.c norm.c decode_step.c sampling.c -lm.
 * Floats print with %.9g (an fp32 value exactly), NaN and infinities as
 * JSON's NaN and (-)Infinity, which Python's json reads. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"
#include "kernels.h"

static const char *DTYPES[2] = {"fp32", "bf16"};

/* A fixed 64-bit LCG (Knuth's MMIX constants): the same numbers on every machine. */
static uint64_t state = 0x9e3779b97f4a7c15u;
static uint32_t next_u32(void) {
    state = state * 6364136223846793005u + 1442695040888963407u;
    return (uint32_t)(state >> 32);
}
static float uniform(float lo, float hi) { return lo + (hi - lo) * (float)(next_u32() >> 8) / 16777216.f; }

/* n values in [lo, hi), fp32 or bf16 (rounded). */
static void *random_values(long n, float lo, float hi, int bf16) {
    void *p = malloc((size_t)n * (bf16 ? 2 : 4));
    for (long i = 0; i < n; ++i) store_value(p, i, uniform(lo, hi), bf16);
    return p;
}

/* A random q8 weight [N, K]: |q| <= 127, K's padding zero, fp16 scales in [2^-7, 2^-6). */
static q8_weight_t random_linear(long N, long K, int with_bias) {
    const long Kp = q8_padded(K), ng = Kp / Q8_GROUP;
    int8_t *q = calloc((size_t)(N * Kp), 1);
    uint16_t *scale = malloc((size_t)(N * ng) * 2);
    for (long n = 0; n < N; ++n)
        for (long k = 0; k < K; ++k) q[n * Kp + k] = (int8_t)((int)(next_u32() % 255) - 127);
    for (long i = 0; i < N * ng; ++i) scale[i] = (uint16_t)(0x2000 + next_u32() % 0x400);
    return (q8_weight_t){q, scale, with_bias ? random_values(N, -1.f, 1.f, 0) : NULL, N, K};
}

static int first_key = 1;
static void key(const char *name) {
    printf("%s\n  \"%s\": ", first_key ? "{" : ",", name);
    first_key = 0;
}
static void put_float(float v) {
    if (isnan(v)) printf("NaN");
    else if (isinf(v)) printf(v > 0 ? "Infinity" : "-Infinity");
    else printf("%.9g", v);
}
static void put_values(const char *name, const void *p, long n, int bf16) {
    key(name);
    for (long i = 0; i < n; ++i) printf(i ? ", " : "["), put_float(load_value(p, i, bf16));
    printf("]");
}
static void put_ints(const char *name, const int64_t *p, long n) {
    key(name);
    for (long i = 0; i < n; ++i) printf("%s%lld", i ? ", " : "[", (long long)p[i]);
    printf("]");
}

static void run_q8_linear(void) {
    const long K = 200, N = 37; /* K padded to 256; N = 9 tiles of 4 and one row */
    const q8_weight_t w = random_linear(N, K, 1);
    char name[64];
    for (int fine = 0; fine < 2; ++fine)
        for (int bf16 = 0; bf16 < 2; ++bf16)
            for (int M = 1; M <= 5; M += 2) {
                void *x = random_values(M * K, -2.f, 2.f, bf16), *y = malloc((size_t)(M * N) * 4);
                q8_linear(x, bf16, M, &w, y, bf16, fine, 2);
                snprintf(name, sizeof name, "q8_linear/%s/M=%d%s", DTYPES[bf16], M, fine ? "/fine" : "");
                put_values(name, y, M * N, bf16);
                free(x), free(y);
            }
    for (int bf16 = 0; bf16 < 2; ++bf16) {
        void *out = malloc((size_t)(N * K) * 4);
        q8_dequantize(&w, out, bf16, 2);
        snprintf(name, sizeof name, "q8_dequantize/%s", DTYPES[bf16]);
        put_values(name, out, N * K, bf16);
        free(out);
    }
}

static void run_add_rms_norm(void) {
    const int rows = 3, dim = 100;
    char name[64];
    for (int bf16 = 0; bf16 < 2; ++bf16) {
        void *x = random_values(rows * dim, -3.f, 3.f, bf16), *res = random_values(rows * dim, -1.f, 1.f, bf16);
        void *weight = random_values(dim, 0.5f, 1.5f, bf16);
        void *sum = malloc(rows * dim * 4), *out = malloc(rows * dim * 4);
        add_rms_norm(x, res, weight, 1e-5f, rows, dim, sum, out, bf16);
        snprintf(name, sizeof name, "add_rms_norm/%s/sum", DTYPES[bf16]);
        put_values(name, sum, rows * dim, bf16);
        snprintf(name, sizeof name, "add_rms_norm/%s/out", DTYPES[bf16]);
        put_values(name, out, rows * dim, bf16);
        free(x), free(res), free(weight), free(sum), free(out);
    }
}

/* Rows: plain; a NaN (the argmax is the first NaN); some -inf; all -inf; shorter than a vector. */
static void run_logits(void) {
    const int B = 4;
    const long V = 1000;
    float *logits = random_values(B * V, -10.f, 10.f, 0);
    logits[V + 700] = NAN;
    for (long i = 0; i < V; i += 3) logits[2 * V + i] = -INFINITY;
    for (long i = 0; i < V; ++i) logits[3 * V + i] = -INFINITY;
    int64_t argmax[4];
    float lse[4];
    logits_argmax_lse(logits, B, V, argmax, lse);
    put_ints("logits_argmax_lse/argmax", argmax, B);
    put_values("logits_argmax_lse/lse", lse, B, 0);
    logits_argmax_lse(logits, 1, 3, argmax, lse);
    put_ints("logits_argmax_lse/short/argmax", argmax, 1);
    put_values("logits_argmax_lse/short/lse", lse, 1, 0);
    free(logits);
}

/* RoPE tables [B, D] at each position, sin's first half negated (as attention.c expects). */
static void rope_tables(const int64_t *positions, int B, int D, int bf16, void **cos_out, void **sin_out) {
    *cos_out = malloc((size_t)(B * D) * 4), *sin_out = malloc((size_t)(B * D) * 4);
    for (int b = 0; b < B; ++b)
        for (int d = 0; d < D; ++d) {
            const float angle = (float)positions[b] * powf(10000.f, -(float)(d % (D / 2)) / (float)(D / 2));
            store_value(*cos_out, b * D + d, cosf(angle), bf16);
            store_value(*sin_out, b * D + d, d < D / 2 ? -sinf(angle) : sinf(angle), bf16);
        }
}

/* n page ids, a random permutation of [0, n): a sequence's pages lie anywhere in the pool. */
static int64_t *shuffled_pages(long n) {
    int64_t *pages = malloc(sizeof(int64_t) * (size_t)n);
    for (long i = 0; i < n; ++i) pages[i] = i;
    for (long i = n - 1; i > 0; --i) {
        const long j = next_u32() % (i + 1);
        const int64_t t = pages[i];
        pages[i] = pages[j], pages[j] = t;
    }
    return pages;
}

/* Contexts of 5 and 150 keys (the second split into two parts of a head's keys), without and with a window. */
static void run_decode_attention(void) {
    enum { B = 2, Hq = 4, Hkv = 2, D = 32, T = 4, M = 38 };
    const int64_t positions[B] = {4, 149};
    const long pages = B * Hkv * M, stride = (Hq + Hkv) * D;
    int64_t *tables = shuffled_pages(pages), write_pages[B * Hkv]; /* tables [B, Hkv, M] */
    for (int i = 0; i < B * Hkv; ++i) write_pages[i] = tables[i * M + positions[i / Hkv] / T];
    char name[64];
    for (int bf16 = 0; bf16 < 2; ++bf16) {
        void *cos, *sin, *out = malloc(B * Hq * D * 4);
        void *qk = random_values(B * stride, -1.f, 1.f, bf16), *v = random_values(B * Hkv * D, -1.f, 1.f, bf16);
        void *k_cache = random_values(pages * T * D, -1.f, 1.f, bf16);
        void *v_cache = random_values(pages * T * D, -1.f, 1.f, bf16);
        rope_tables(positions, B, D, bf16, &cos, &sin);
        for (int window = 0; window <= 140; window += 140) {
            const decode_attention_t args = {qk, stride, v, Hkv * D, cos, sin, positions, k_cache, v_cache, T * D, D, T,
                                             write_pages, tables, M, window, 1.f / sqrtf(D), B, Hq, Hkv, D, out, bf16, 2};
            decode_attention(&args);
            snprintf(name, sizeof name, "decode_attention/%s/window=%d", DTYPES[bf16], window);
            put_values(name, out, B * Hq * D, bf16);
        }
        free(cos), free(sin), free(qk), free(v), free(k_cache), free(v_cache), free(out);
    }
    free(tables);
}

/* A random q8 model's decode step with its head: two layers (the second with a window of 4 keys),
 * a batch of two at positions 3 and 9, two threads. */
static void run_decode_layers(void) {
    enum { L = 2, H = 64, I = 128, Hq = 4, Hkv = 2, D = 16, V = 100, B = 2, T = 4, M = 3 };
    const int64_t positions[B] = {3, 9};
    const long pages = B * M * L * Hkv;
    int64_t *tables = shuffled_pages(pages); /* block_tables [B, M, L, Hkv] */
    char name[64];
    for (int bf16 = 0; bf16 < 2; ++bf16) {
        decode_layer_t layers[L];
        for (int l = 0; l < L; ++l)
            layers[l] = (decode_layer_t){random_values(H, 0.8f, 1.2f, bf16), random_linear((Hq + 2 * Hkv) * D, H, 0),
                                         random_linear(H, Hq * D, 0), random_values(H, 0.8f, 1.2f, bf16),
                                         random_linear(2 * I, H, 0), random_linear(H, I, 0), l == 1 ? 4 : 0};
        const q8_weight_t lm_head = random_linear(V, H, 0);
        const decode_model_t model = {layers, L, H, I, Hq, Hkv, D, V, 1e-5f, 1.f / sqrtf(D), bf16,
                                      random_values(H, 0.8f, 1.2f, bf16), &lm_head};
        void *cos, *sin;
        rope_tables(positions, B, D, bf16, &cos, &sin);
        float logits[B * V], lse[B];
        int64_t argmax[B];
        void *k_cache = random_values(pages * T * D, -1.f, 1.f, bf16);
        void *v_cache = random_values(pages * T * D, -1.f, 1.f, bf16);
        decode_batch_t batch = {random_values(B * H, -1.f, 1.f, bf16), B, cos, sin, positions, k_cache, v_cache,
                                T * D, D, T, tables, M, logits, argmax, lse, 2};
        decode_layers(&model, &batch);
        snprintf(name, sizeof name, "decode_layers/%s/x", DTYPES[bf16]);
        put_values(name, batch.x, B * H, bf16);
        snprintf(name, sizeof name, "decode_layers/%s/logits", DTYPES[bf16]);
        put_values(name, logits, B * V, 0);
        snprintf(name, sizeof name, "decode_layers/%s/argmax", DTYPES[bf16]);
        put_ints(name, argmax, B);
        snprintf(name, sizeof name, "decode_layers/%s/lse", DTYPES[bf16]);
        put_values(name, lse, B, 0);
    }
    free(tables);
}

int main(void) {
    run_q8_linear();
    run_add_rms_norm();
    run_logits();
    run_decode_attention();
    run_decode_layers();
    key("isa");
    printf("\"%s\"\n}\n", muxd_isa());
    return 0;
}

/* Drives decode_step.c's gemv_shared (work sharing of a linear's rows) with
 * one thread of the team slowed down, for tests/engine/test_work_sharing.py.
 *
 * q8.c is built with q8_tile renamed to q8_tile_real: the q8_tile here wraps
 * it, sleeping `slow_us` on the slow thread and counting who computed each
 * tile. Usage: driver THREADS ROWS ROUNDS SLOW_US; each round slows thread
 * round % THREADS and computes y = x . W^T over fresh NaNs; prints JSON:
 * rows that differ from one thread's gemv_rows (bitwise), tiles computed by
 * nobody, tiles computed twice, and tiles of the slow thread's static share
 * that another thread computed. */
#include <stdio.h>
#include <unistd.h>
#include "decode_step.c"

void q8_tile_real(const q8_act_t *x, int m0, int mr, const q8_weight_t *w, int n0, int nr, void *y, int y_bf16);

static int slow_thread = -1, slow_us = 0;
static int *computed_by; /* per tile: the last thread that computed it */
static atomic_int *times_computed;

void q8_tile(const q8_act_t *x, int m0, int mr, const q8_weight_t *w, int n0, int nr, void *y, int y_bf16) {
    const int t = omp_in_parallel() ? omp_get_thread_num() : -1;
    if (t == slow_thread) usleep(slow_us);
    q8_tile_real(x, m0, mr, w, n0, nr, y, y_bf16);
    if (computed_by && m0 == 0) {
        computed_by[n0 / Q8_ROWS] = t;
        atomic_fetch_add(&times_computed[n0 / Q8_ROWS], 1);
    }
}

int main(int argc, char **argv) {
    const int T = atoi(argv[1]), N = atoi(argv[2]), K = 256, M = 1, rounds = atoi(argv[3]);
    slow_us = atoi(argv[4]);
    const int Kp = K, tiles = (N + Q8_ROWS - 1) / Q8_ROWS;
    int8_t *w = malloc((size_t)N * Kp);
    uint16_t *s = malloc((size_t)N * (Kp / Q8_GROUP) * 2);
    float x[256], *ref = malloc(4 * (size_t)N), *y = malloc(4 * (size_t)N);
    srand(7);
    for (long i = 0; i < (long)N * Kp; ++i) w[i] = (int8_t)(rand() % 255 - 127);
    for (long i = 0; i < (long)N * (Kp / Q8_GROUP); ++i) s[i] = (uint16_t)(0x2000 + rand() % 0x800); /* small fp16 */
    for (int k = 0; k < K; ++k) x[k] = (float)(rand() % 2001 - 1000) / 500.f;
    const q8_weight_t linear = {w, s, NULL, N, K};
    q8_act_t q;
    q8_act_alloc(&q, M, Kp);
    q8_quantize_rows(x, 0, M, K, &q);
    gemv_rows(&q, M, &linear, ref, 0, 0, N);
    computed_by = malloc(sizeof(int) * tiles);
    times_computed = malloc(sizeof(atomic_int) * tiles);
    share_slot_t *slots = aligned_alloc(64, sizeof(share_slot_t) * T);
    for (int i = 0; i < T; ++i) atomic_init(&slots[i].next, 0), atomic_init(&slots[i].end, 0), atomic_init(&slots[i].epoch, 0);
    barrier_t bar = {aligned_alloc(64, sizeof(barrier_slot_t) * T), T};
    for (int i = 0; i < T; ++i) atomic_init(&bar.slots[i].reached, 0);
    long wrong = 0, missed = 0, twice = 0, taken_from_slow = 0;
    /* One team for all rounds, meeting at barriers, as decode_layers runs its linears. */
    #pragma omp parallel num_threads(T)
    {
        const int t = omp_get_thread_num();
        q8_act_t mine;
        q8_act_alloc(&mine, M, Kp);
        q8_quantize_rows(x, 0, M, K, &mine);
        for (int r = 0; r < rounds; ++r) {
            if (t == 0) {
                slow_thread = r % T;
                for (int i = 0; i < N; ++i) y[i] = NAN;
                for (int i = 0; i < tiles; ++i) computed_by[i] = -1, atomic_init(&times_computed[i], 0);
            }
            barrier_wait(&bar, t);
            gemv_shared(&mine, M, &linear, y, 0, slots, r + 1, t, T);
            barrier_wait(&bar, t);
            if (t == 0) {
                long lo, hi;
                share(N, GRAIN, slow_thread, T, &lo, &hi);
                for (int i = 0; i < N; ++i) wrong += memcmp(&y[i], &ref[i], 4) != 0;
                for (int i = 0; i < tiles; ++i) {
                    missed += times_computed[i] == 0;
                    twice += times_computed[i] > 1;
                    taken_from_slow += i * Q8_ROWS >= lo && i * Q8_ROWS < hi && computed_by[i] != slow_thread;
                }
            }
        }
        q8_act_free(&mine);
    }
    printf("{\"wrong\": %ld, \"missed\": %ld, \"twice\": %ld, \"taken_from_slow\": %ld}\n", wrong, missed, twice,
           taken_from_slow);
    return 0;
}

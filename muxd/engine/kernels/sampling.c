/* The greedy token and the log-normaliser of each row of logits, in one call
 * (engine/sampler.py).
 *
 * Why it exists: at SmolLM2's 49k vocabulary, torch's argmax and log_softmax
 * over one row took about 70 us of a ~5 ms CPU decode step (on the one
 * intra-op thread a decode step's small ops run on); two vector passes here
 * take a few.
 *
 * argmax as torch.argmax: the first index of the largest value, or of the
 * first NaN if there is one (its log-normaliser is then NaN too).
 * lse = log(sum(exp(x))), computed as max + log(sum(exp(x - max))).
 */
#include <math.h>
#include <stdint.h>

#include "common.h"

static void row_argmax_lse(const float *x, long V, int64_t *argmax, float *lse) {
    long best = 0, j = 0;
    float top = x[0];
    int nan = 0;
#if defined(__AVX512F__)
    __m512 tops = _mm512_set1_ps(x[0]);
    __mmask16 unordered = 0;
    for (; j + 16 <= V; j += 16) {
        const __m512 v = _mm512_loadu_ps(x + j);
        unordered |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        tops = _mm512_max_ps(tops, v);
    }
    top = _mm512_reduce_max_ps(tops);
    nan = unordered != 0;
#endif
    for (long k = j; k < V; ++k) {
        nan |= isnan(x[k]);
        top = x[k] > top ? x[k] : top;
    }
    for (best = 0; best < V && !(nan ? isnan(x[best]) : x[best] == top); ++best) {
    }
    *argmax = best;
    if (nan || isinf(top)) { /* NaN, or +inf (e^(inf - inf)), or all -inf */
        *lse = nan ? NAN : top;
        return;
    }
    *lse = top + logf(exp_shifted(x, V, top, NULL));
}

/* logits [B, V] fp32 -> argmax [B], lse [B]. */
void logits_argmax_lse(const float *logits, int B, long V, int64_t *argmax, float *lse) {
    for (int b = 0; b < B; ++b) row_argmax_lse(logits + (long)b * V, V, argmax + b, lse + b);
}

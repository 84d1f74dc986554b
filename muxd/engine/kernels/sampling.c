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

#include "kernels.h"

/* x [0, n) (n > 0) -> its largest value and whether it holds a NaN. */
static float row_top(const float *x, long n, int *nan) {
    long j = 0;
    float top = x[0];
    int unordered = 0;
    if (n >= VF_LANES) {
        vf tops = vf_load(x);
        for (; j + VF_LANES <= n; j += VF_LANES) {
            const vf v = vf_load(x + j);
            unordered |= vf_has_nan(v);
            tops = vf_max(tops, v);
        }
        top = vf_hmax(tops);
    }
    for (long k = j; k < n; ++k) {
        unordered |= isnan(x[k]);
        top = x[k] > top ? x[k] : top;
    }
    *nan = unordered;
    return top;
}

/* The first index of `top` in x (of the first NaN where `nan`). */
static long first_index(const float *x, long n, float top, int nan) {
    long best = 0;
    while (best < n && !(nan ? isnan(x[best]) : x[best] == top)) ++best;
    return best;
}

/* x [0, n) (n > 0) -> its argmax, largest value, whether it holds a NaN, and
 * the sum of exp(x - largest) (0 where that is not finite). */
void argmax_lse_part(const float *x, long n, argmax_lse_t *part) {
    int nan;
    const float top = row_top(x, n, &nan);
    part->best = first_index(x, n, top, nan);
    part->top = top;
    part->nan = nan;
    part->sum = nan || isinf(top) ? 0.f : exp_shifted(x, n, top, NULL);
}

/* The argmax and lse of a row from its consecutive parts' (`offsets`: each
 * part's first index): the first part holding the largest value (or the
 * first NaN) has the first index of it, as one pass over the row finds. */
void argmax_lse_merge(const argmax_lse_t *parts, const long *offsets, int n, int64_t *argmax, float *lse) {
    int at = 0;
    for (int p = 1; p < n; ++p)
        if (!parts[at].nan && (parts[p].nan || parts[p].top > parts[at].top)) at = p;
    const float top = parts[at].top;
    *argmax = offsets[at] + parts[at].best;
    if (parts[at].nan || isinf(top)) { /* NaN, or +inf (e^(inf - inf)), or all -inf */
        *lse = parts[at].nan ? NAN : top;
        return;
    }
    float sum = 0.f;
    for (int p = 0; p < n; ++p) sum += parts[p].sum * (p == at ? 1.f : expf(parts[p].top - top));
    *lse = top + logf(sum);
}

/* logits [B, V] fp32 -> argmax [B], lse [B]. */
void logits_argmax_lse(const float *logits, int B, long V, int64_t *argmax, float *lse) {
    const long start = 0;
    for (int b = 0; b < B; ++b) {
        argmax_lse_t whole;
        argmax_lse_part(logits + (long)b * V, V, &whole);
        argmax_lse_merge(&whole, &start, 1, argmax + b, lse + b);
    }
}

/* Constrained decoding (engine/grammar.py): rows[r] of logits [*, V] keeps
 * only the tokens whose bit is set in bits [R, W] (bit j % 32 of word j / 32,
 * llguidance's layout; W * 32 >= V), the others become -inf, and argmax[r] is
 * the masked row's argmax. One pass over the row for the mask, one for the
 * argmax: torch's unpack, masked_fill and argmax took ~8 ms at 16 x 49k. */
void logits_mask_argmax(float *logits, long V, const int64_t *rows, int R, const int32_t *bits, long W,
                        int64_t *argmax) {
    for (int r = 0; r < R; ++r) {
        float *x = logits + rows[r] * V;
        const uint32_t *word = (const uint32_t *)(bits + (long)r * W);
        for (long w = 0; w * 32 < V; ++w) {
            const uint32_t keep = word[w];
            const long end = (w + 1) * 32 < V ? (w + 1) * 32 : V;
            if (keep == 0xffffffffu) continue;
            if (keep == 0) { /* most words, in a constrained state: a plain (vectorised) fill */
                for (long j = w * 32; j < end; ++j) x[j] = -INFINITY;
                continue;
            }
            for (long j = w * 32; j < end; ++j)
                if (!((keep >> (j - w * 32)) & 1u)) x[j] = -INFINITY;
        }
        int nan;
        const float top = row_top(x, V, &nan);
        argmax[r] = first_index(x, V, top, nan);
    }
}

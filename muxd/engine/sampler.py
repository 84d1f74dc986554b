"""Turn a batch of logits into tokens: greedy, temperature, top-k, top-p, seeds.

Batched on tensors; only the per-request random draw loops over rows, so that
a request with a ``seed`` gets the same tokens whatever it is batched with.
"""

from __future__ import annotations

import torch

from muxd.core.sequence import SamplingParams
from muxd.engine.cpu_kernels import load_kernels


def sample(
    logits: torch.Tensor,  # [B, V] fp32
    params: list[SamplingParams],
    generators: list[torch.Generator],
    argmax_lse: tuple[torch.Tensor, torch.Tensor] | None = None,
    allowed: tuple[list[int], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(tokens [B], logprobs [B])``; logprobs are of the model's raw distribution.

    ``argmax_lse``: each row's argmax and log-normaliser where the step has
    computed them already (``model.Logits``); ``tokens`` may then be that
    argmax tensor, filled in. ``allowed``: constrained rows and the bitmask of
    their allowed tokens ``[R, ceil(V / 32)]`` (``engine/grammar.py``); their other logits become
    -inf in place before any token is picked, so greedy and random draws
    alike stay in the grammar, and the other rows are untouched."""
    tokens, normalisers = argmax_lse or _argmax_and_logsumexp(logits)
    if allowed is not None:
        _mask_rows(logits, tokens, *allowed)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if rows:
        tokens[rows] = _sample_rows(logits[rows], [params[i] for i in rows], [generators[i] for i in rows])
    return tokens, logits.gather(1, tokens[:, None]).squeeze(1) - normalisers


def _mask_rows(logits: torch.Tensor, tokens: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    """Mask ``rows`` of ``logits`` to ``bitmask`` [R, ceil(V / 32)] int32 (bit ``j % 32`` of word
    ``j // 32``: token ``j`` allowed) and re-take their argmax; the normalisers stay raw. One C
    call on a CPU (``kernels/sampling.c``), torch ops elsewhere."""
    B, V = logits.shape
    index = torch.tensor(rows, dtype=torch.int64)
    kernels = load_kernels() if logits.device.type == "cpu" else None
    if kernels is not None and logits.dtype == torch.float32 and logits.is_contiguous() and bitmask.is_contiguous():
        argmax = torch.empty(len(rows), dtype=torch.int64)
        kernels.logits_mask_argmax(
            logits.data_ptr(), V, index.data_ptr(), len(rows), bitmask.data_ptr(), bitmask.shape[1], argmax.data_ptr()
        )
        tokens.index_copy_(0, index.to(tokens.device), argmax.to(tokens.device))
        return
    index = index.to(logits.device)
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    allowed = ((bitmask.to(logits.device)[:, :, None] >> shifts) & 1).view(len(rows), -1)[:, :V].bool()  # [R, V]
    masked = logits.index_select(0, index).masked_fill_(~allowed, float("-inf"))
    logits.index_copy_(0, index, masked)
    tokens.index_copy_(0, index, masked.argmax(dim=-1))


def _argmax_and_logsumexp(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits.argmax(-1), logits.logsumexp(-1))``: one C call on a CPU
    (``kernels/sampling.c``; torch's argmax and log_softmax over a 49k
    vocabulary cost ~70 us of a ~5 ms decode step), torch ops elsewhere."""
    kernels = load_kernels() if logits.device.type == "cpu" else None
    if kernels is None or logits.dtype != torch.float32 or not logits.is_contiguous() or logits.shape[-1] == 0:
        return logits.argmax(dim=-1), torch.logsumexp(logits, dim=-1)
    B, V = logits.shape
    tokens = torch.empty(B, dtype=torch.int64)
    normalisers = torch.empty(B, dtype=torch.float32)
    kernels.logits_argmax_lse(logits.data_ptr(), B, V, tokens.data_ptr(), normalisers.data_ptr())
    return tokens, normalisers


def _sample_rows(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]) -> torch.Tensor:
    R, V = logits.shape
    temps = torch.tensor([p.temperature for p in params], dtype=logits.dtype, device=logits.device)
    logits = logits / temps[:, None]
    if any(p.top_k or p.top_p < 1.0 for p in params):
        logits = _filter_top_k_top_p(logits, params)
    # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits).
    uniform = torch.stack([torch.rand(V, generator=g, device=g.device) for g in generators]).to(logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp_(min=1e-20, max=1.0 - 1e-7)))
    return (logits + gumbel).argmax(dim=-1)


def _filter_top_k_top_p(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    R, V = logits.shape
    device = logits.device
    top_k = torch.tensor([p.top_k or V for p in params], device=device)
    top_p = torch.tensor([p.top_p for p in params], dtype=logits.dtype, device=device)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(V, device=device)[None, :]
    sorted_logits = sorted_logits.masked_fill(ranks >= top_k[:, None], float("-inf"))
    probs = sorted_logits.softmax(dim=-1)  # renormalised over the top k, as transformers does
    # Drop a token when the tokens ranked above it already cover top_p.
    drop = probs.cumsum(dim=-1) - probs > top_p[:, None]
    drop[:, 0] = False  # always keep the most likely token
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)

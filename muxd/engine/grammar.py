"""Constrained decoding: which tokens a sequence may take next, from its grammar (llguidance).

A request's ``SamplingParams.grammar`` is an llguidance grammar (JSON text,
built and validated by the front end: ``server/structured.py``). Per model,
``Grammars`` keeps what llguidance needs of the tokenizer (built on first
use, from the model's ``tokenizer.json``) and one compiled matcher per
grammar text (an LRU cache), compiled on a background thread: ``prepare``
returns a future that the engine core waits on before it schedules the
sequence, so a slow compilation delays that request, never a step.

Each constrained sequence gets its own copy of the compiled matcher,
advanced lazily to the sequence's output tokens when its next mask is
asked for (and rolled back if a sampled token was dropped), so preemption
(the tokens stay) and ``n > 1`` (one sequence per choice) need nothing more.
``allowed`` fills the bitmask of every constrained row of a step at once
(llguidance's thread pool, the GIL released); ``engine/sampler.py`` masks
the rows' logits with it (one C pass on a CPU). A finished grammar
allows only the end-of-sequence tokens, so the sequence stops there.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import llguidance
import llguidance.numpy as llg_numpy
import torch

from muxd.core.sequence import Sequence

log = logging.getLogger("muxd.engine")

CACHE_SIZE = 64  # compiled grammars kept per model (a matcher holds its lexer: tens of kB to a few MB)


@dataclass
class _SeqMatcher:
    matcher: llguidance.LLMatcher
    consumed: int = 0  # output tokens the matcher has consumed


class GrammarError(ValueError):
    """A grammar llguidance cannot compile (the front end validates first, so this is rare)."""


class Grammars:
    """One model's grammar compiler, compiled-grammar cache and per-sequence matchers."""

    def __init__(self, tokenizer_json: Path, vocab_size: int, eos_token_ids: tuple[int, ...], mask_threads: int = 1):
        self.tokenizer_json = Path(tokenizer_json)
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self._mask_threads = max(1, mask_threads)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._executor: llguidance.LLExecutor | None = None
        self._compiler = ThreadPoolExecutor(1, thread_name_prefix="muxd-grammar")
        self._compiled: OrderedDict[str, Future[llguidance.LLMatcher]] = OrderedDict()
        self._lock = threading.Lock()
        self._matchers: weakref.WeakKeyDictionary[Sequence, _SeqMatcher] = weakref.WeakKeyDictionary()

    # -- compilation (off the step) --------------------------------------------
    def prepare(self, grammar: str) -> Future[llguidance.LLMatcher]:
        """The compiled ``grammar``: from the cache, or compiled on the background thread."""
        with self._lock:
            future = self._compiled.get(grammar)
            if future is None:
                future = self._compiler.submit(self._compile, grammar)
                self._compiled[grammar] = future
                while len(self._compiled) > CACHE_SIZE:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(grammar)
            return future

    def _compile(self, grammar: str) -> llguidance.LLMatcher:
        matcher = llguidance.LLMatcher(self.tokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return matcher

    def tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's view of the model's tokenizer (~0.2 s for a 49k vocabulary; made once)."""
        if self._tokenizer is None:
            text = self.tokenizer_json.read_text()
            eos = self.eos_token_ids or None
            self._tokenizer = llguidance.LLTokenizer(text, n_vocab=self.vocab_size, eos_token=eos)
        return self._tokenizer

    def close(self) -> None:
        self._compiler.shutdown(wait=False, cancel_futures=True)

    # -- masks (on the step) -----------------------------------------------------
    def allowed(self, seqs: list[Sequence]) -> torch.Tensor:
        """``[len(seqs), ceil(vocab_size / 32)]`` int32: bit ``j % 32`` of word ``j // 32`` is set
        where the sequence's grammar allows token ``j`` next."""
        matchers = [(self._synced(seq), i) for i, seq in enumerate(seqs)]
        bitmask = llg_numpy.allocate_token_bitmask(len(seqs), self.vocab_size)
        if self._executor is None:
            self._executor = llguidance.LLExecutor(self._mask_threads)
        llg_numpy.fill_next_token_bitmask_par(self._executor, matchers, bitmask)
        return torch.from_numpy(bitmask)

    def _synced(self, seq: Sequence) -> llguidance.LLMatcher:
        """The sequence's matcher, having consumed exactly its output tokens."""
        state = self._matchers.get(seq)
        if state is None:
            # Ready: the core waited for it (unless CACHE_SIZE other grammars evicted it since,
            # when this recompiles it here, on the step).
            compiled = self.prepare(seq.params.grammar or "")
            state = _SeqMatcher(compiled.result().deep_copy())
            self._matchers[seq] = state
        out = seq.output_ids
        if state.consumed > len(out):
            state.matcher.rollback(state.consumed - len(out))
            state.consumed = len(out)
        if state.consumed < len(out):
            if not state.matcher.consume_tokens(out[state.consumed :]):
                log.warning("sequence %s left its grammar: %s", seq.seq_id, state.matcher.get_error())
            state.consumed = len(out)
        return state.matcher

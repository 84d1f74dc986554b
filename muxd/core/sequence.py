"""One request's state as the scheduler and runners see it (no torch).

A sequence is ``prompt_ids + output_ids``; ``num_computed`` of its leading
tokens have K/V in the pool, held in ``pages`` (block after block, each block
``layers x kv_heads`` pages for ``page_tokens`` tokens). Preemption drops the
pages and sets ``num_computed`` back to 0: the tokens stay, and the next
prefill recomputes them (or reuses blocks still in the prefix cache).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the model's context
    ABORT = "abort"  # cancelled by the client or the unit


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. Validated at the edge (API, CLI).

    ``temperature == 0`` means greedy. ``top_k == 0`` and ``top_p == 1`` mean
    no filtering. ``seed`` makes sampling reproducible per request.
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    grammar: str | None = None  # an llguidance grammar (JSON text) the output must match; see engine/grammar.py

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(eq=False)
class Sequence:
    """A request in flight. Identity is the object (``eq=False``)."""

    seq_id: str
    model: str
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    arrival: float = 0.0
    eos_token_ids: tuple[int, ...] = ()
    max_model_len: int | None = None
    deadline: float | None = None  # arrival + SLO: the scheduler favours requests at risk

    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    num_computed: int = 0
    pages: list[int] = field(default_factory=list)
    num_preemptions: int = 0
    # Prefix caching (core/kv_manager.py): the chain hash of each leading full,
    # computed block the cache has seen, and which of those blocks are shared
    # cache entries (refcounted) rather than pages of this sequence alone.
    block_hashes: list[int] = field(default_factory=list)
    shared_blocks: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("a sequence needs at least one prompt token")

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token: int, logprob: float = 0.0) -> None:
        """Record a sampled token and finish on EOS, stop ids or length."""
        self.output_ids.append(token)
        self.output_logprobs.append(logprob)
        if token in self.params.stop_token_ids or (
            not self.params.ignore_eos and token in self.eos_token_ids
        ):
            self.finish(FinishReason.STOP)
        elif len(self.output_ids) >= self.params.max_tokens or (
            self.max_model_len is not None and self.num_tokens >= self.max_model_len
        ):
            self.finish(FinishReason.LENGTH)

    def finish(self, reason: FinishReason) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason

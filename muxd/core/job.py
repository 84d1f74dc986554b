"""The scheduler's decision, as plain data the runner consumes.

A job is one forward pass of one model over a ragged batch of *chunks*: each
chunk computes K/V for positions ``[start, end)`` of one sequence and, when
``end`` reaches the sequence's length, samples its next token. A prefill job
holds prompt chunks (split when long); a decode job holds one-token chunks.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from muxd.core.sequence import Sequence


class JobKind(enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True)
class Chunk:
    seq: Sequence
    start: int
    end: int

    @property
    def num_tokens(self) -> int:
        return self.end - self.start

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the end of the sequence and so samples a token."""
        return self.end == self.seq.num_tokens


@dataclass
class Job:
    kind: JobKind
    model: str
    chunks: list[Chunk]
    share: float = 1.0  # fraction of the unit's compute this job may use
    job_id: int = 0
    slots: int = 1  # the same share in the unit's indivisible compute slots (CPU: cores)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


@dataclass
class JobResult:
    """What the runner hands back: one sampled token per sampling chunk."""

    job: Job
    tokens: dict[str, int] = field(default_factory=dict)  # seq_id -> token
    logprobs: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0

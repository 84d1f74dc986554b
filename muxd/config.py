"""Typed configuration of models and units, validated once at the edge.

The daemon resolves TOML, environment and flags into these; inside muxd they
are trusted. They are plain picklable dataclasses: a ``UnitConfig`` is what a
unit process is started with.
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPE_NAMES = ("float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "int8", "nf4", "fp4")
POLICIES = ("fcfs",)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: str
    dtype: str = "float32"
    quantization: str = "none"
    rate: float = 1.0  # expected requests per second: placement and initial KV quotas

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a model needs a name")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"model {self.name!r}: dtype {self.dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"model {self.name!r}: quantization {self.quantization!r} is not one of {', '.join(QUANTIZATIONS)}"
            )
        if self.rate < 0:
            raise ValueError(f"model {self.name!r}: rate must be >= 0, got {self.rate}")


@dataclass(frozen=True)
class UnitConfig:
    """One LLM unit: its models, device, KV pool and scheduling policy."""

    name: str
    models: tuple[ModelConfig, ...]
    device: str = "cpu"
    kv_cache_bytes: int = 256 << 20
    page_tokens: int = 16
    policy: str = "fcfs"
    max_batch_seqs: int = 64
    max_prefill_tokens: int = 512
    threads: int | None = None  # intra-op threads of the unit process (None: torch's default)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError(f"unit {self.name!r} has no models")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"unit {self.name!r}: model names repeat: {names}")
        if self.policy not in POLICIES:
            raise ValueError(f"unit {self.name!r}: policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.page_tokens < 1 or self.kv_cache_bytes < 1:
            raise ValueError(f"unit {self.name!r}: page_tokens and kv_cache_bytes must be positive")

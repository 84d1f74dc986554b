"""What muxd needs to know about a model, read from its Hugging Face config.

The shape comes from ``config.json`` through transformers' own config
classes (so defaults and RoPE variants are theirs), never from a file or
directory name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "proportional")


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only transformer of the Llama family."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position: int
    tie_word_embeddings: bool
    qk_norm: bool  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    rope_type: str
    sliding_windows: tuple[int | None, ...]  # per layer; None = full attention
    eos_token_ids: tuple[int, ...]

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def pages_per_block(self) -> int:
        """Pages one block of ``page_tokens`` tokens takes: layers x kv heads."""
        return self.num_layers * self.num_kv_heads

    @classmethod
    def from_hf_config(cls, config: Any, eos_token_ids: tuple[int, ...] = ()) -> ModelSpec:
        model_type = config.model_type
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model type {model_type!r} is not supported; muxd serves {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(f"activation {config.hidden_act!r} is not supported (only silu)")
        rope = dict(getattr(config, "rope_parameters", None) or {})
        rope_type = rope.get("rope_type", "default")
        if rope_type not in STATIC_ROPE_TYPES:
            raise ValueError(f"RoPE type {rope_type!r} is not supported; muxd serves {STATIC_ROPE_TYPES}")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(
            model_type=model_type,
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            head_dim=head_dim,
            rms_norm_eps=config.rms_norm_eps,
            max_position=config.max_position_embeddings,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            qk_norm=model_type == "qwen3",
            rope_type=rope_type,
            sliding_windows=_sliding_windows(config),
            eos_token_ids=eos_token_ids,
        )


def _sliding_windows(config: Any) -> tuple[int | None, ...]:
    window = getattr(config, "sliding_window", None)
    n = config.num_hidden_layers
    if config.model_type == "mistral":
        return (window,) * n
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * n
    use = getattr(config, "use_sliding_window", False)
    return tuple(window if use and t == "sliding_attention" else None for t in layer_types)

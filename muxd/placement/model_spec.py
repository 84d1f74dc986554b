"""What placement needs to know of a model: its size, its KV cache per token, its load and its SLO.

Sizes come from the model's configuration (a Hugging Face ``config.json``
read as a dict, ``ModelSpec.from_hf_config``), never from its name: the
parameter count is summed from the shapes (embeddings, attention with its
KV heads, the gated MLP, norms), and the KV cache of one token is
``2 (K and V) × layers × kv_heads × head_dim × dtype bytes``, so a
grouped-query model (few KV heads) holds a fraction of a multi-head one's
cache. MuxServe's reference sizes models from the digits of their name and
their KV cache from ``hidden_size``, which over-counts GQA models by
``heads / kv_heads`` (8× for LLaMA-3-70B).

``LLAMA`` holds the configurations of the paper's LLaMA-7B/13B/30B/65B and
``paper_models`` the paper's 19-model synthetic workload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from muxd.workload import popularity_rates

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


@dataclass(frozen=True)
class ModelSpec:
    """One model to place. ``cost_name`` names its costs in the ``CostModel`` (default: ``name``).

    ``rate`` is its expected load in requests per second; its SLO is
    ``slo_scale`` times its latency served alone (the paper's definition),
    to be met by ``slo_goal`` of its requests.
    """

    name: str
    params: int  # parameters, all of them (embeddings included)
    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    dtype_bytes: int = 2
    rate: float = 1.0
    slo_scale: float = 5.0
    slo_goal: float = 0.99
    cost_name: str | None = None
    measured_weight_bytes: int | None = None  # as loaded (a profile's figure: q8 scales, tied heads)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a model needs a name")
        for field in ("params", "layers", "kv_heads", "head_dim", "hidden", "dtype_bytes"):
            if getattr(self, field) < 1:
                raise ValueError(f"model {self.name!r}: {field} must be >= 1, got {getattr(self, field)}")
        if self.rate < 0:
            raise ValueError(f"model {self.name!r}: rate must be >= 0 requests/s, got {self.rate}")
        if self.slo_scale <= 0 or not 0 < self.slo_goal <= 1:
            raise ValueError(f"model {self.name!r}: slo_scale must be > 0 and slo_goal in (0, 1]")

    @property
    def costs(self) -> str:
        """The name of its costs in the cost model."""
        return self.cost_name or self.name

    @property
    def weight_bytes(self) -> int:
        return self.measured_weight_bytes or self.params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token, all layers, all KV heads (GQA: KV heads, not attention heads)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def with_load(self, rate: float, **changes: Any) -> ModelSpec:
        """The same model under another load (and any other field changed)."""
        return replace(self, rate=rate, **changes)

    @classmethod
    def from_hf_config(cls, name: str, config: Mapping[str, Any], *, rate: float = 1.0,
                       dtype: str | None = None, **kwargs: Any) -> ModelSpec:
        """A LLaMA-family model (gated MLP) from its ``config.json`` as a dict."""
        try:
            hidden = int(config["hidden_size"])
            layers = int(config["num_hidden_layers"])
            heads = int(config["num_attention_heads"])
            kv_heads = int(config.get("num_key_value_heads") or heads)
            head_dim = int(config.get("head_dim") or hidden // heads)
            intermediate = int(config["intermediate_size"])
            vocab = int(config["vocab_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"model {name!r}: its config lacks a usable {e} (a LLaMA-family config.json?)") from None
        dtype = dtype or str(config.get("torch_dtype") or "float16")
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"model {name!r}: dtype {dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
        attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o; k, v
        mlp = 3 * hidden * intermediate  # gate, up, down
        per_layer = attention + mlp + 2 * hidden  # two RMSNorms
        embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
        params = layers * per_layer + embeddings + hidden
        return cls(name=name, params=params, layers=layers, kv_heads=kv_heads, head_dim=head_dim, hidden=hidden,
                   intermediate=intermediate, vocab=vocab, dtype_bytes=DTYPE_BYTES[dtype], rate=rate, **kwargs)


def _llama(hidden: int, layers: int, heads: int, intermediate: int) -> dict[str, Any]:
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "intermediate_size": intermediate, "vocab_size": 32000, "torch_dtype": "float16"}


# The original LLaMA's configurations (Touvron et al. 2023, table 2), as the
# paper and its cost file use them; multi-head attention (kv heads = heads).
LLAMA: dict[str, dict[str, Any]] = {
    "llama-7b": _llama(4096, 32, 32, 11008),
    "llama-13b": _llama(5120, 40, 40, 13824),
    "llama-30b": _llama(6656, 60, 52, 17920),
    "llama-65b": _llama(8192, 80, 64, 22016),
}

# The paper's synthetic workload: 19 models, most popular at 40 req/s.
PAPER_COUNTS = {"llama-7b": 12, "llama-13b": 4, "llama-30b": 2, "llama-65b": 1}
PAPER_MAX_RATE = 40.0


def paper_models(alpha: float = 0.9, max_rate: float = PAPER_MAX_RATE, slo_scale: float = 5.0) -> list[ModelSpec]:
    """The paper's 19 LLaMA models with rates ∝ k^-alpha, the most popular at ``max_rate`` req/s.

    Popularity goes round-robin over the sizes (7B-0, 13B-0, 30B-0, 65B-0,
    7B-1, 13B-1, 30B-1, 7B-2, ...), so every size has a popular member;
    models are named ``<size>-<i>`` and costed as ``<size>``.
    """
    left = dict(PAPER_COUNTS)
    order: list[tuple[str, int]] = []
    while any(left.values()):
        for size, n in left.items():
            if n:
                order.append((size, PAPER_COUNTS[size] - n))
                left[size] = n - 1
    names = [f"{size}-{i}" for size, i in order]
    rates = popularity_rates(names, 1.0, alpha)
    top = max(rates.values())
    return [ModelSpec.from_hf_config(f"{size}-{i}", LLAMA[size], rate=max_rate * rates[f"{size}-{i}"] / top,
                                     cost_name=size, slo_scale=slo_scale)
            for size, i in order]

"""Random-weight models of real shapes, made on the device without a checkpoint.

Benchmarks on a GPU want models of the shapes people serve (Llama-3.2-1B,
Qwen2.5-3B, Llama-3.1-8B) without their weights, which cannot be downloaded
here. Writing random checkpoints of that size (16 GB for the 8B) and reading
them back costs minutes; initialising them on the CPU with ``from_config``
costs minutes too. So transformers builds its model straight on the target
device (``from_config`` under ``torch.device(device)``: the random init runs
there, in milliseconds on a GPU), and muxd's model takes the same tensors
(``loader.from_hf_model``). The transformers model is the twin a benchmark
compares with: both hold the same weights.

A model is named ``random:NAME``: NAME is one of ``PRESETS`` (a real
model's config fields) or a family of ``factory.FAMILIES`` (the tiny test
shape, for CPU tests of this path). Token ids come from the factory's small
tokenizer (``factory.build_tokenizer``), whose ids lie below every vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch

from muxd.models.factory import ENDOFTEXT, FAMILIES, IM_END, TOKENIZER_VOCAB_SIZE, build_config

RANDOM_PREFIX = "random:"

_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}  # fmt: skip

# The config fields of the real models (their config.json), as (family, fields).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-3.2-1b": ("llama3", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True, rope_parameters={**_LLAMA3_ROPE, "factor": 32.0},
        initializer_range=0.02)),
    "qwen2.5-3b": ("qwen2", dict(
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        initializer_range=0.02)),
    "llama-3.1-8b": ("llama3", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        tie_word_embeddings=False, rope_parameters={**_LLAMA3_ROPE, "factor": 8.0}, initializer_range=0.02)),
}  # fmt: skip


def is_random(name: object) -> bool:
    """Whether ``name`` asks for a random-weight model (``random:NAME``)."""
    return str(name).startswith(RANDOM_PREFIX)


def random_config(name: str) -> Any:
    """The transformers config of ``random:NAME``; a ValueError names the choices."""
    key = str(name).removeprefix(RANDOM_PREFIX)
    if key in PRESETS:
        family, fields = PRESETS[key]
    elif key in FAMILIES:
        family, fields = key, {}
    else:
        choices = ", ".join(RANDOM_PREFIX + k for k in (*PRESETS, *FAMILIES))
        raise ValueError(f"unknown random model {name!r}; choose one of {choices}")
    tokenizer = _token_ids()
    fields = {"vocab_size": TOKENIZER_VOCAB_SIZE, **fields}
    return build_config(family, eos_id=tokenizer[IM_END], pad_id=tokenizer[ENDOFTEXT], **fields)


def random_hf_model(name: str, dtype: torch.dtype, device: str | torch.device, seed: int = 0) -> Any:
    """transformers' model of ``random:NAME`` with random weights made on ``device``.

    Seeded (``seed``) without touching the caller's RNG state; the same seed
    gives the same weights on the same device, not across devices.
    """
    from transformers import AutoModelForCausalLM

    config = random_config(name)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if device.type == "cuda":  # the init ran on this thread's stream; the engine's streams read it next
        torch.cuda.synchronize(device)
    return model.eval().requires_grad_(False)


def _token_ids() -> dict[str, int]:
    """The special tokens' ids in the factory tokenizer (fixed by its training: specials come first)."""
    from muxd.models.factory import SPECIAL_TOKENS

    return {token: i for i, token in enumerate(SPECIAL_TOKENS)}

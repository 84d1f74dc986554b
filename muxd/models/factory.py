"""Tiny random checkpoints of each supported family, built offline in well under a second.

Tests and benchmarks need real Hugging Face
checkpoint directories (config.json, safetensors, tokenizer, chat template)
of every architecture muxd serves, without a network. This module makes them:
a byte-level BPE tokenizer trained on a fixed built-in corpus, and a model of
the requested family with random weights drawn from a seeded generator, so
the same ``(family, seed, overrides)`` always gives bit-identical files.

The shape defaults are tiny (about 0.5 M parameters, overhead-bound on a CPU);
``config_overrides`` scale them up (``hidden_size=512, num_hidden_layers=8``)
for benchmarks.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

FAMILIES = ("llama", "llama3", "mistral", "qwen2", "qwen3")

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

# ChatML, as SmolLM2 and Qwen use it. Generation stops at <|im_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2/Qwen3's ChatML with tools (a compact form of Qwen2.5's template): the
# tools' signatures in a system turn, the Hermes ``<tool_call>`` format for the
# assistant's calls, tool results as ``<tool_response>`` in a user turn.
# Without tools it renders exactly as CHAT_TEMPLATE.
QWEN_CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\n\n' }}{%- endif %}"
    "{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}"
    "{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if tools and loop.first and message['role'] == 'system' %}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{- '<|im_start|>assistant\n' + (message['content'] or '') }}"
    "{%- for call in message['tool_calls'] %}"
    "{{- '\n<tool_call>\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": '"
    " + (call['function']['arguments'] | tojson) + '}\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
# Llama 3.1's way with tools, on ChatML tokens: the functions and the bare JSON
# call format in a system turn, calls as ``{"name": ..., "parameters": ...}``,
# results in an ``ipython`` turn. Without tools it renders as CHAT_TEMPLATE.
LLAMA3_CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\nGiven the following functions, please respond with a JSON for a function call "
    "with its proper arguments that best answers the given prompt.\n\nRespond in the format "
    "{\"name\": function name, \"parameters\": dictionary of argument name and its value}. "
    "Do not use variables.\n' }}"
    "{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] %}"
    "{%- for call in message['tool_calls'] %}"
    "{{- '<|im_start|>assistant\n{\"name\": \"' + call['function']['name'] + '\", \"parameters\": '"
    " + (call['function']['arguments'] | tojson) + '}<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>ipython\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
FAMILY_TEMPLATES = {"qwen2": QWEN_CHAT_TEMPLATE, "qwen3": QWEN_CHAT_TEMPLATE, "llama3": LLAMA3_CHAT_TEMPLATE}

TOKENIZER_VOCAB_SIZE = 1024

_SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    # Ten times transformers' 0.02: at 0.02 a tiny random model's logits are
    # nearly flat and a tied-embedding model (llama3) greedily repeats one
    # token forever. At 0.2 greedy output varies and the top logits stand
    # apart, so a parity test against transformers is not decided by rounding.
    "initializer_range": 0.2,
}

# Per family: the transformers config class name and what sets it apart.
_FAMILY_CONFIG: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {"tie_word_embeddings": False}),
    "llama3": (
        "LlamaConfig",
        {
            "tie_word_embeddings": True,
            # transformers v5 names this `rope_parameters` (v4: `rope_scaling` + `rope_theta`).
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 128,
            },
        },
    ),
    "mistral": ("MistralConfig", {"tie_word_embeddings": False}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": False}),  # q/k/v biases are built in
    # q/k norm, and head_dim set apart from hidden_size / heads (32 vs 16), as in real
    # Qwen3 models; head_dim stays 32 like the other families so all share one page pool.
    "qwen3": ("Qwen3Config", {"tie_word_embeddings": False, "num_attention_heads": 8, "head_dim": 32}),
}

# A fixed corpus, so the tokenizer is the same on every machine and every run.
CORPUS = """\
The quick brown fox jumps over the lazy dog.
What is the capital of France? The capital of France is Paris.
Paris is a city on the river Seine, known for its museums and cafes.
Berlin is the capital of Germany, and Rome is the capital of Italy.
A language model predicts the next token from the tokens before it.
Serving several models at once keeps the memory and the compute busy.
Prefill reads the whole prompt at once; decode adds one token at a time.
The scheduler admits new requests while there is room in the cache.
Each page of the cache holds keys and values for a few tokens of one head.
When the pool runs out of pages, the youngest sequence is preempted.
Popular models and unpopular models can share the same group of devices.
Hello! How can I help you today?
Please write a short poem about the sea.
The sea is wide and blue, and the waves roll onto the sand.
Tell me a story about a cat who lived in a library.
Once upon a time, a small grey cat slept between the shelves of books.
Numbers: one, two, three, four, five, six, seven, eight, nine, ten.
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 32 64 128 256 512 1024
Water boils at one hundred degrees Celsius at sea level.
The sun rises in the east and sets in the west.
Good morning, good afternoon, good evening, and good night.
Thank you very much for your question; here is what I know.
I am a helpful assistant. I answer questions clearly and briefly.
The user asked a question, and the assistant gave an answer.
Python is a programming language that is easy to read.
def add(a, b): return a + b
for i in range(10): print(i)
Mathematics, physics, chemistry and biology are natural sciences.
The library opens at nine in the morning and closes at six in the evening.
Trains, buses, bicycles and cars move people around the city.
Apples, oranges, bananas and grapes are kinds of fruit.
It was a bright cold day in April, and the clocks were striking thirteen.
All happy families are alike; each unhappy family is unhappy in its own way.
To be, or not to be, that is the question.
The weather today is sunny with a light breeze from the south.
Summer, autumn, winter and spring are the four seasons of the year.
The mountain was covered in snow, and the air was thin and clear.
She opened the window and listened to the birds singing in the garden.
He wrote a letter to his friend and walked to the post office.
Computers store data in memory and on disk, as bits and bytes.
"""


def build_tokenizer(chat_template: str = CHAT_TEMPLATE) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``CORPUS``, with ChatML specials.

    Byte-level means every string encodes, whatever its characters. ``<|im_end|>``
    is the EOS token (it ends an assistant turn), ``<|endoftext|>`` is padding.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT, unk_token=None
    )
    fast.chat_template = chat_template
    return fast


def build_config(family: str, vocab_size: int, eos_id: int, pad_id: int, **overrides: Any) -> Any:
    """The transformers config of a tiny ``family`` model; ``overrides`` win over every default."""
    if family not in _FAMILY_CONFIG:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    import transformers

    class_name, family_fields = _FAMILY_CONFIG[family]
    fields: dict[str, Any] = {
        **_SHAPE,
        **family_fields,
        "vocab_size": vocab_size,
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        **overrides,
    }
    return getattr(transformers, class_name)(**fields)


def build_tiny_checkpoint(family: str, out_dir: Path, *, seed: int = 0, **config_overrides: Any) -> Path:
    """Write a random ``family`` checkpoint to ``out_dir`` and return ``out_dir``.

    Deterministic: the weights come from a generator seeded with ``seed``
    (the caller's global RNG state is left untouched), and the tokenizer is
    trained on the fixed corpus, so equal arguments give bit-identical files.
    The family is mixed into the seed so that, say, "llama" and "mistral"
    (same tensor shapes) never get the same weights: a test serving both
    would otherwise not notice a request routed to the wrong one.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = build_tokenizer(FAMILY_TEMPLATES.get(family, CHAT_TEMPLATE))
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    config = build_config(family, len(tokenizer), eos_id, pad_id, **config_overrides)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{family}:{seed}".encode()))
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir

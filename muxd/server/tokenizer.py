"""Tokenization in the front end, without transformers: ``tokenizer.json`` and a Jinja chat template.

The front end must not import torch or transformers, yet its token ids must
be exactly the ones transformers would give, or the model sees a different
prompt than in every reference run. So this mirrors transformers' two
steps: render the chat template the way ``apply_chat_template`` does (an
``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and ``lstrip_blocks``,
``raise_exception``, ``strftime_now``, a ``tojson`` that does not escape
HTML, the special tokens as variables), then encode the text without adding
special tokens (the template has them). Plain completions encode with the
tokenizer's own special tokens (a BOS where the model wants one), as
``tokenizer(prompt)`` does. Tests check both against transformers.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ChatTemplateError(ValueError):
    """The template rejected the conversation (its ``raise_exception``) or failed to render."""


class Tokenizer:
    """Encode, decode and apply the chat template of one model directory."""

    def __init__(
        self,
        tokenizer: Any,
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
        clean_up_spaces: bool = False,
    ) -> None:
        self._tok = tokenizer
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self._clean_up = clean_up_spaces

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{path} has no tokenizer.json; muxd needs a fast (tokenizers) tokenizer")
        config = _read_json(path / "tokenizer_config.json")
        special = {**_special_tokens(_read_json(path / "special_tokens_map.json")), **_special_tokens(config)}
        return cls(
            HFTokenizer.from_file(str(path / "tokenizer.json")),
            _chat_template(path, config),
            special,
            bool(config.get("clean_up_tokenization_spaces", False)),
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        text = self._tok.decode(ids, skip_special_tokens=True)
        return _clean_up_spaces(text) if self._clean_up else text

    def token_text(self, token_id: int) -> str:
        """One token's text, special tokens included (for logprobs)."""
        return self._tok.decode([token_id], skip_special_tokens=False)

    @property
    def supports_tools(self) -> bool:
        """True when the chat template renders ``tools`` (Qwen2/Qwen3, Llama 3.1+ do; SmolLM2's does not)."""
        return bool(self.chat_template) and _uses_tools(self.chat_template)

    @property
    def tool_format(self) -> str:
        """How the template shows tool calls (``server/structured.py``: Hermes blocks or bare JSON)."""
        from muxd.server.structured import tool_format

        return tool_format(self.chat_template or "")

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        if not self.chat_template:
            raise ChatTemplateError("this model has no chat template; use /v1/completions with a plain prompt")
        import jinja2

        try:
            return _compile(self.chat_template).render(
                messages=messages,
                tools=tools or None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the model's chat template rejected the messages: {e}") from e

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt, tools), add_special_tokens=False)


@lru_cache(maxsize=32)
def _uses_tools(template: str) -> bool:
    import jinja2.meta

    return "tools" in jinja2.meta.find_undeclared_variables(_compile(template).environment.parse(template))


@lru_cache(maxsize=32)
def _compile(template: str) -> Any:
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
        # Jinja's own tojson escapes HTML characters, which transformers' does not.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def _special_tokens(config: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if isinstance(value, dict):  # a serialized AddedToken
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def _chat_template(path: Path, config: dict[str, Any]) -> str | None:
    """``chat_template.jinja`` (transformers v5 saves it there), else tokenizer_config.json's."""
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _clean_up_spaces(text: str) -> str:
    """transformers' ``clean_up_tokenization``: drop the space before punctuation and contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                          (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):  # fmt: skip
        text = text.replace(before, after)
    return text

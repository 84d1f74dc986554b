"""One API request in flight: its ``n`` choices in a unit, turned into text deltas.

The unit speaks token ids; this module owns everything between those ids
and the API: each choice's incremental detokenizer (stop strings are
matched on text here, and a stopped choice is aborted in the unit so its
pages free at once), finish reasons, usage, and the request's latencies for
telemetry. It also checks what the unit must never see: a prompt longer
than the context, token ids outside the vocabulary.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from muxd import ipc
from muxd.config import ModelConfig
from muxd.core.detokenize import IncrementalDetokenizer
from muxd.core.slo import Outcome
from muxd.errors import ContextLengthError, InvalidRequestError, QueueFullError, UnitUnavailableError
from muxd.server.router import Event, Router, UnitFailure
from muxd.server.telemetry import Telemetry
from muxd.server.tokenizer import Tokenizer

log = logging.getLogger("muxd.server")

PROMPT_TAIL = 4  # prompt tokens that give the first output token its left context when decoded
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "length"}  # the unit's -> the API's


@dataclass
class ServedModel:
    """A model as the front end knows it: config, tokenizer, limits, sampling defaults.

    A model loaded on demand is known from the start by its config alone
    (``pending``); its tokenizer and limits are read (``prepare``) once its
    files are known to load: a GGUF file's come from its converted directory.
    """

    config: ModelConfig
    unit: str
    tokenizer: Tokenizer | None
    max_position: int | None
    vocab_size: int
    defaults: dict[str, Any]  # temperature / top_p / top_k from generation_config.json
    created: int = field(default_factory=lambda: int(time.time()))
    info: ipc.ModelInfo | None = None  # from the unit's Ready or ModelLoaded

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def prepared(self) -> bool:
        return self.tokenizer is not None

    @classmethod
    def load(cls, config: ModelConfig, unit: str) -> ServedModel:
        """Read the tokenizer now where it is at hand (a preloaded Hugging Face directory)."""
        served = cls.pending(config, unit)
        if config.preload and (Path(config.path) / "config.json").is_file():
            served.prepare(config.path)
        return served

    @classmethod
    def pending(cls, config: ModelConfig, unit: str) -> ServedModel:
        return cls(config, unit, None, None, 0, {})

    def prepare(self, directory: str) -> None:
        """Read tokenizer, context length, vocabulary and sampling defaults from a Hugging Face ``directory``."""
        path = Path(directory)
        hf = json.loads((path / "config.json").read_text())
        hf = hf.get("text_config", hf)
        gen = _read_json(path / "generation_config.json")
        self.defaults = {k: gen[k] for k in ("temperature", "top_p", "top_k") if isinstance(gen.get(k), (int, float))}
        self.max_position = int(hf.get("max_position_embeddings", 2048))
        self.vocab_size = int(hf["vocab_size"])
        self.tokenizer = Tokenizer.from_dir(path)


def sampling_params(
    served: ServedModel,
    prompt_len: int,
    max_tokens: int | None,
    default_max_tokens: int | None,
    req: Any,
    prompt_param: str,
    logprobs: bool,
) -> dict[str, Any]:
    """The unit's ``SamplingParams`` kwargs; raise a 400 if prompt and output do not fit the context."""
    ctx = served.max_position
    if prompt_len >= ctx:
        raise ContextLengthError(
            f"the prompt is {prompt_len} tokens; model {served.name!r} has a context of {ctx} tokens "
            "for prompt and output together; shorten the prompt",
            param=prompt_param,
        )
    room = ctx - prompt_len
    if max_tokens is None:
        max_tokens = room if default_max_tokens is None else min(default_max_tokens, room)
    elif max_tokens > room:
        raise ContextLengthError(
            f"max_tokens={max_tokens} plus the prompt's {prompt_len} tokens exceed model {served.name!r}'s "
            f"context of {ctx} tokens; ask for at most {room}",
            param="max_tokens",
        )
    d = served.defaults
    top_k = req.top_k if req.top_k is not None else d.get("top_k", 0)
    return {
        "max_tokens": max_tokens,
        "temperature": float(req.temperature if req.temperature is not None else d.get("temperature", 1.0)),
        "top_p": float(req.top_p if req.top_p is not None else d.get("top_p", 1.0)),
        "top_k": max(0, int(top_k)),
        "seed": req.seed,
        "ignore_eos": req.ignore_eos,
        "logprobs": logprobs,
    }


def check_token_ids(served: ServedModel, ids: list[int]) -> None:
    bad = next((t for t in ids if not 0 <= t < served.vocab_size), None)
    if bad is not None:
        raise InvalidRequestError(
            f"prompt token id {bad} is outside the vocabulary of model {served.name!r} (ids 0 to {served.vocab_size - 1})",
            param="prompt",
        )


@dataclass
class Delta:
    """What one choice added since the last delta."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str | None = None


@dataclass
class _Choice:
    index: int
    request_id: str
    detok: IncrementalDetokenizer
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None


class Generation:
    """``n`` choices of one prompt. ``start`` admits them; iterate ``deltas``; always ``cancel`` at the end."""

    def __init__(
        self,
        router: Router,
        telemetry: Telemetry,
        served: ServedModel,
        request_id: str,
        prompt_ids: list[int],
        params: dict[str, Any],
        n: int,
        stop: tuple[str, ...],
        clock: Callable[[], float] = time.monotonic,
        arrival: float | None = None,  # when the request came (default: now), on ``clock``
    ) -> None:
        self.router, self.telemetry, self.served = router, telemetry, served
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.params = params
        self.clock = clock
        self.arrival = clock() if arrival is None else arrival
        tail = prompt_ids[-PROMPT_TAIL:]
        decode = served.tokenizer.decode
        self.choices = [_Choice(i, f"{request_id}-{i}", IncrementalDetokenizer(decode, stop, tail)) for i in range(n)]
        self._by_id = {c.request_id: c for c in self.choices}
        self.sink: asyncio.Queue[Event] = asyncio.Queue()

    @property
    def model(self) -> str:
        return self.served.name

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.choices)

    def start(self) -> None:
        seed = self.params.get("seed")
        requests = [
            (c.request_id, self.prompt_ids, {**self.params, "seed": None if seed is None else seed + c.index})
            for c in self.choices
        ]
        try:
            self.router.submit(self.model, requests, self.sink)
        except QueueFullError:
            self.telemetry.rejected(self.model)
            raise

    async def deltas(self) -> AsyncIterator[list[Delta]]:
        """Deltas as the unit's steps arrive (one list per wake-up), until every choice has finished."""
        open_choices = len(self.choices)
        while open_choices:
            events = [await self.sink.get()]
            while not self.sink.empty():
                events.append(self.sink.get_nowait())
            out = [d for d in map(self._apply, events) if d is not None]
            open_choices -= sum(1 for d in out if d.finish_reason)
            if out:
                yield out

    def cancel(self) -> None:
        """Abort the choices still running (client gone, error, or shutdown); idempotent."""
        for c in self.choices:
            if c.finish_reason is None:
                c.finish_reason = "abort"
                self.router.abort(c.request_id)

    def _apply(self, ev: Event) -> Delta | None:
        c = self._by_id[ev.request_id]
        if c.finish_reason is not None:
            return None  # stopped by a stop string; the unit's last events are moot
        if isinstance(ev, UnitFailure):
            self.telemetry.failed(self.model)
            raise UnitUnavailableError(ev.reason)
        if ev.error:
            self.telemetry.failed(self.model)
            raise InvalidRequestError(f"model {self.model!r} cannot take this request: {ev.error}")
        if ev.token_ids:
            now = self.clock()
            if c.first_token_at is None:
                c.first_token_at = now
                self.telemetry.prompt_done(self.model, len(self.prompt_ids))
            c.last_token_at = now
            c.token_ids += ev.token_ids
            c.logprobs += ev.logprobs
            self.telemetry.tokens(self.model, len(ev.token_ids))
        text = c.detok.add(ev.token_ids)
        finish = None
        if c.detok.stopped and not ev.finished:
            self.router.abort(c.request_id)
            finish = "stop"
        elif ev.finished:
            finish = FINISH_REASONS.get(ev.finish_reason or "", "stop")
        if finish:
            text += c.detok.flush()
            c.finish_reason = finish
            self._record(c)
        return Delta(c.index, text, ev.token_ids, ev.logprobs, finish)

    def _record(self, c: _Choice) -> None:
        ttft = None if c.first_token_at is None else c.first_token_at - self.arrival
        tpot = None
        if c.first_token_at is not None and len(c.token_ids) > 1:
            tpot = (c.last_token_at - c.first_token_at) / (len(c.token_ids) - 1)
        outcome = Outcome(ok=True, ttft_s=ttft, tpot_s=tpot, e2e_s=self.clock() - self.arrival)
        self.telemetry.finished(self.model, outcome, len(self.prompt_ids), len(c.token_ids))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}

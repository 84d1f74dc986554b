"""``muxd generate``: offline generation over several models sharing one KV pool.

Until the daemon lands this is the most useful thing muxd does: every prompt
goes to every model, and all those requests run concurrently through ONE
``LLMEngine`` (continuous batching, one page pool for all models), so the
summary shows the multiplexing: how many pages the models held at their
peak, out of how many, and whether anyone was preempted.

With no ``--model`` it serves the demo: SmolLM2-135M-Instruct plus two tiny
random-weight models (built once into the muxd cache) whose gibberish makes
the point that three models of different shapes share one pool.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from muxd.cli.common import exit_with, parse_model_specs
from muxd.errors import ModelLoadError, MuxdError

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "What does a language model do?",
)


@dataclass
class Run:
    """What the loop tracks: each request's text so far, and the pool's high-water marks."""

    keys: dict[str, tuple[str, int]]  # request id -> (model, prompt index)
    texts: dict[tuple[str, int], str] = field(default_factory=dict)
    tokens: dict[tuple[str, int], int] = field(default_factory=dict)
    finish: dict[tuple[str, int], str] = field(default_factory=dict)
    peak_pages: int = 0
    peak_held: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def generate(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="NAME=PATH of a model directory; repeat for more (default: the demo)."),
    ] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt; repeat for more.")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens to generate per answer.")] = 48,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 is greedy.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Base seed of sampling (request k uses seed + k).")] = 0,
    dtype: Annotated[str, typer.Option(help="Weight dtype: float32, bfloat16 or float16.")] = "float32",
    quantization: Annotated[
        str, typer.Option(help="none, q8 (muxd's CPU int8 kernel), or bitsandbytes' int8, nf4 or fp4.")
    ] = "none",
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Wrap prompts in each model's chat template.")] = True,
    kv_cache_mb: Annotated[int, typer.Option(min=1, help="Size of the shared KV pool in MiB.")] = 256,
) -> None:
    """Answer every prompt with every model, all at once through one engine and one KV pool."""
    from rich.console import Console

    try:
        specs = parse_model_specs(model or [])
    except ValueError as e:
        exit_with(str(e))
    prompts = list(prompt or DEFAULT_PROMPTS)
    err = Console(stderr=True)
    try:
        with err.status("loading models") as status:
            paths = specs or _demo_models(status, err)
            engine, tokenizers = _load(paths, dtype, quantization, kv_cache_mb << 20, status)
        run = _submit(engine, tokenizers, prompts, max_tokens, temperature, seed, chat, err)
    except (MuxdError, ValueError) as e:
        exit_with(getattr(e, "message", None) or str(e))
    console = Console()
    with engine:
        _run(engine, run, prompts, console)
    _print_answers(run, prompts, list(paths), console)
    console.print(_summary(engine, run, list(paths)))


def _demo_models(status, err) -> dict[str, str]:
    """The demo models (built on first use), their progress on the status line and their notes on stderr."""
    from muxd.models.demo import ensure_demo_models

    def say(msg: str) -> None:
        status.update(msg)
        if msg.startswith("note:"):
            err.print(msg)

    return ensure_demo_models(progress=say)


def _load(paths: Mapping[str, str | Path], dtype: str, quantization: str, kv_bytes: int, status) -> tuple[Any, dict[str, Any]]:
    from muxd.engine.llm_engine import LLMEngine
    from muxd.models.loader import load_model
    from muxd.models.tokenizer import load_tokenizer

    models, tokenizers = {}, {}
    for name, path in paths.items():
        status.update(f"loading {name} from {path}")
        try:
            models[name] = load_model(path, dtype, quantization=quantization)
        except MuxdError as e:
            raise ModelLoadError(f"--model {name}: {e.message}") from None
        tokenizers[name] = load_tokenizer(models[name].path)
    decoders = {name: tok.decode for name, tok in tokenizers.items()}
    return LLMEngine(models, kv_cache_bytes=kv_bytes, decoders=decoders), tokenizers


def _submit(engine, tokenizers, prompts, max_tokens, temperature, seed, chat, err) -> Run:
    """Queue every (model, prompt) pair; sampled requests get distinct, reproducible seeds."""
    from muxd.core.sequence import SamplingParams

    keys: dict[str, tuple[str, int]] = {}
    for name, tok in tokenizers.items():
        use_chat = chat and bool(getattr(tok.hf, "chat_template", None))
        if chat and not use_chat:
            err.print(f"note: {name} has no chat template; its prompts go in as plain text")
        for i, text in enumerate(prompts):
            ids = tok.apply_chat_template([{"role": "user", "content": text}]) if use_chat else tok.encode(text)
            request_seed = seed + len(keys) if temperature > 0 else None
            params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=request_seed)
            keys[engine.add_request(name, ids, params)] = (name, i)
    return Run(keys)


def _run(engine, run: Run, prompts: list[str], console) -> None:
    """Step the engine to the end; on a terminal, show the answers growing live."""
    from contextlib import nullcontext

    from rich.live import Live

    live = Live(console=console, transient=True, refresh_per_second=8) if console.is_terminal else nullcontext()
    t0 = time.perf_counter()
    with live:
        while engine.has_unfinished:
            for out in engine.step():
                key = run.keys[out.request_id]
                run.texts[key] = out.text
                run.tokens[key] = len(out.output_ids)
                if out.finished:
                    run.finish[key] = out.finish_reason or ""
            used = engine.pool.total - engine.pool.num_free - engine.pool.num_cached  # cached: evictable
            run.peak_pages = max(run.peak_pages, used)
            for name in engine.runners:
                run.peak_held[name] = max(run.peak_held.get(name, 0), engine.pool.held(name))
            if console.is_terminal:
                live.update(_live_table(run, prompts))
    run.seconds = time.perf_counter() - t0


def _live_table(run: Run, prompts: list[str]):
    from rich.table import Table

    table = Table(show_header=True, expand=True)
    table.add_column("model", no_wrap=True)
    table.add_column("prompt", ratio=1)
    table.add_column("answer so far", ratio=3)
    for model, i in run.keys.values():
        table.add_row(model, prompts[i], run.texts.get((model, i), "").strip())
    return table


def _print_answers(run: Run, prompts: list[str], models: list[str], console) -> None:
    from rich.markup import escape

    width = max(map(len, models))
    for i, text in enumerate(prompts):
        console.print(f"\n[bold]> {escape(text)}[/bold]")
        for name in models:
            answer = run.texts.get((name, i), "").strip().replace("\n", " ")
            console.print(f"  [cyan]{name:<{width}}[/cyan]  {escape(answer)}")


def _summary(engine, run: Run, models: list[str]):
    """Per-model rows and a total: what each model produced and how much of the shared pool it held."""
    from rich.table import Table

    seconds = max(run.seconds, 1e-9)
    table = Table(title=f"{len(run.keys)} requests over {len(models)} models in {run.seconds:.2f} s")
    for header in ("model", "requests", "finished", "tokens", "tok/s", "peak pages"):
        table.add_column(header, justify="left" if header == "model" else "right")

    def row(name: str, keys: list[tuple[str, int]], peak: int) -> list[str]:
        tokens = sum(run.tokens.get(k, 0) for k in keys)
        done = sum(k in run.finish for k in keys)
        return [name, str(len(keys)), str(done), str(tokens), f"{tokens / seconds:.1f}", str(peak)]

    for name in models:
        table.add_row(*row(name, [k for k in run.keys.values() if k[0] == name], run.peak_held.get(name, 0)))
    table.add_section()
    table.add_row(*row("all", list(run.keys.values()), run.peak_pages), style="bold")
    steps = engine.stats.step_times
    table.caption = (
        f"one pool of {engine.pool.total} pages; {engine.scheduler.num_preemptions} preemptions; "
        f"{len(steps['prefill'])} prefill + {len(steps['decode'])} decode steps"
    )
    return table

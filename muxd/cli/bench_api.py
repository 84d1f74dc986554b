"""``muxd bench api``: the front end's added latency and streamed tokens/s.

Registered on ``muxd bench`` by ``cli/app.py`` from this module, so that
``cli/bench.py`` keeps one owner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def api(
    model: Annotated[
        Path | None, typer.Option(help="Model directory (default: the tiny-llama demo model, so the engine step is short).")
    ] = None,
    requests: Annotated[int, typer.Option(min=2, help="Timed 1-token completions per path.")] = 200,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed requests first.")] = 20,
    stream_tokens: Annotated[int, typer.Option(min=1, help="Tokens of the streamed completion.")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Also print the results as one JSON line, last.")] = False,
) -> None:
    """Front-end overhead per request (p50/p99 over the socket vs the unit's pipe) and streamed tokens/s."""
    from rich.console import Console
    from rich.table import Table

    from muxd.bench.api import TARGET_OVERHEAD_P50_MS, run_api_bench
    from muxd.models.demo import demo_dirs, ensure_tiny_model

    status_console = Console(stderr=True)
    with status_console.status("preparing") as status:
        path = model or ensure_tiny_model("llama", demo_dirs()["tiny-llama"])
        result = run_api_bench(path, requests, warmup, stream_tokens, progress=lambda m: status.update(m))
    table = Table(title=f"front-end overhead, {result['requests']} one-token completions ({Path(result['model']).name})",
                  caption=f"target: p50 overhead < {TARGET_OVERHEAD_P50_MS} ms")  # fmt: skip
    for column in ("path", "p50 ms", "p99 ms", f"stream tok/s ({stream_tokens} tokens)"):
        table.add_column(column, justify="left" if column == "path" else "right")
    table.add_row("unit via pipe (direct)", f"{result['direct_p50_ms']:.2f}", f"{result['direct_p99_ms']:.2f}",
                  f"{result['direct_stream_tok_s']:.0f}")  # fmt: skip
    table.add_row("muxd API over the socket", f"{result['api_p50_ms']:.2f}", f"{result['api_p99_ms']:.2f}",
                  f"{result['api_stream_tok_s']:.0f}")  # fmt: skip
    table.add_row("front-end overhead", f"{result['overhead_p50_ms']:.2f}", f"{result['overhead_p99_ms']:.2f}", "")
    table.add_row("same API through httpx", f"{result['api_httpx_p50_ms']:.2f}", f"{result['api_httpx_p99_ms']:.2f}", "")
    table.add_row("GET /healthz round trip", f"{result['healthz_p50_ms']:.2f}", "", "")
    Console().print(table)
    if as_json:
        typer.echo(json.dumps(result))

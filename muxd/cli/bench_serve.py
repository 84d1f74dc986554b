"""``muxd bench serve``: muxd against any OpenAI-compatible server (llama.cpp's ``llama-server``, vLLM, ...).

Registered on ``muxd bench`` by ``cli/app.py``. The bench itself
(``muxd.bench.serve``) needs only httpx, imported inside the command, so
registering it costs ``muxd --help`` nothing and the bench runs without torch.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer


def parse_concurrency(value: str) -> list[int]:
    """``"1,8,16" -> [1, 8, 16]``."""
    levels = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        if not item.isdigit() or int(item) < 1:
            raise ValueError(f"--concurrency {item!r} is not a positive integer; e.g. --concurrency 1,8,16")
        levels.append(int(item))
    if not levels:
        raise ValueError("--concurrency needs at least one level, e.g. --concurrency 1,8,16")
    return levels


def serve(
    url: Annotated[
        str | None,
        typer.Option(help="muxd's address: http://host:port or a Unix socket path (default: the daemon's socket)."),
    ] = None,
    model: Annotated[str, typer.Option(help="Model name to request from muxd.")] = "smollm2",
    concurrency: Annotated[str, typer.Option(help="Comma list of concurrency levels (closed loop).")] = "1,8,16",
    requests: Annotated[int, typer.Option(min=1, help="Requests per level and server.")] = 32,
    max_tokens: Annotated[int, typer.Option(min=1, help="max_tokens of every request.")] = 64,
    peer_url: Annotated[
        str | None, typer.Option(help="A second OpenAI-compatible server to compare with, e.g. http://127.0.0.1:8088.")
    ] = None,
    peer_model: Annotated[str | None, typer.Option(help="Model name at the peer (default: --model).")] = None,
    repeats: Annotated[
        int, typer.Option(min=1, help="Turns per level and server; the best run counts (a shared machine is noisy).")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Also print the results as one JSON line, last.")] = False,
) -> None:
    """Streamed chat completions at each concurrency level: tok/s, TTFT and TPOT, muxd and the peer in turn."""
    from rich.console import Console

    from muxd import paths
    from muxd.bench.serve import ServeBenchError, run_serve_bench
    from muxd.cli.common import exit_with

    try:
        levels = parse_concurrency(concurrency)
    except ValueError as e:
        exit_with(str(e))
    status_console = Console(stderr=True)
    try:
        with status_console.status("connecting") as status:
            report = run_serve_bench(
                url or str(paths.find_socket()),
                model,
                levels,
                requests,
                max_tokens,
                peer_url=peer_url,
                peer_model=peer_model,
                repeats=repeats,
                progress=lambda msg: status.update(msg),
            )
    except ServeBenchError as e:
        exit_with(str(e))
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: keep the rows whole
        console.width = max(console.width, 120)
    console.print(results_table(report))
    if as_json:
        typer.echo(json.dumps(report))


def results_table(report: dict[str, Any]):
    """One row per level and server: tok/s, muxd/peer, TTFT and TPOT percentiles, tokens per request, errors."""
    from rich import box
    from rich.table import Table

    servers = report["servers"]
    names = ", ".join(f"{label} = {s['model']} at {s['url']}" for label, s in servers.items())
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"{report['requests']} streamed chat completions of {report['max_tokens']} tokens per level: {names}",
        caption=(
            "closed loop; tok/s = generated tokens / wall time of the level"
            + (f", best of {report['repeats']} turns" if report["repeats"] > 1 else "")
            + f"; TTFT and TPOT in ms; load average {report['load_avg_1m_before']} -> {report['load_avg_1m_after']}"
        ),
    )
    columns = [
        ("tok/s", "tok_s", "{:.1f}"),
        ("TTFT\np50", "ttft_p50_ms", "{:.0f}"),
        ("TTFT\np99", "ttft_p99_ms", "{:.0f}"),
        ("TPOT\np50", "tpot_p50_ms", "{:.1f}"),
        ("TPOT\np99", "tpot_p99_ms", "{:.1f}"),
        ("tokens\n/req", "tokens_per_request", "{:.1f}"),
        ("reqs", "requests", "{}"),
        ("errors", "errors", "{}"),
    ]
    table.add_column("conc.", justify="right")
    table.add_column("server")
    for header, _, _ in columns[:1]:
        table.add_column(header, justify="right")
    table.add_column("muxd /\npeer", justify="right")
    for header, _, _ in columns[1:]:
        table.add_column(header, justify="right")
    for row in report["levels"]:
        for i, label in enumerate(servers):
            cells = ["-" if row.get(f"{label}_{k}") is None else f.format(row[f"{label}_{k}"]) for _, k, f in columns]
            ratio = f"{row['ratio']:.2f}x" if label == "muxd" and row.get("ratio") is not None else ""
            table.add_row(str(row["concurrency"]) if i == 0 else "", label, cells[0], ratio, *cells[1:])
    errors = [(label, row[f"{label}_first_error"]) for row in report["levels"] for label in servers
              if row.get(f"{label}_first_error")]  # fmt: skip
    if errors:
        table.caption += f"; first error ({errors[0][0]}): {errors[0][1]}"
    return table

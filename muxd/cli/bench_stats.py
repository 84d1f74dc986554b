"""``muxd bench stats``: the daemon's live figures against the bench's own timings (``muxd.bench.stats``)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from muxd.cli.client_verbs import SocketOption
from muxd.cli.common import exit_with


def stats(
    duration: Annotated[float, typer.Option(min=1, help="Seconds of Poisson load (rates: the models' configured rates).")] = 60.0,
    max_tokens: Annotated[int, typer.Option(min=2, help="The longest answer; each request asks for 1/4 to all of it.")] = 32,
    subscribers: Annotated[int, typer.Option(min=1, help="Stats streams opened to measure the stream's CPU cost.")] = 4,
    interval_ms: Annotated[int, typer.Option(min=50, help="The streams' interval.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the arrivals and lengths.")] = 0,
    socket: SocketOption = None,
) -> None:
    """Load a running daemon; compare its SLO attainment and compute shares with the bench's timings; time the stream."""
    from rich.console import Console

    from muxd import paths
    from muxd.bench.stats import run_stats_bench
    from muxd.errors import MuxdError

    console = Console(stderr=True)
    try:
        with console.status("connecting") as status:
            report = asyncio.run(run_stats_bench(str(socket or paths.find_socket()), duration, max_tokens, seed,
                                                 subscribers, interval_ms, progress=status.update))  # fmt: skip
    except MuxdError as e:
        exit_with(e.message)
    typer.echo(json.dumps(report, indent=2))

"""``muxd simulate``: a workload on simulated units driven by the serving scheduler (``muxd.placement.simulator``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from muxd.cli.common import exit_with


def parse_profiles(values: list[str]) -> dict[str, Path]:
    """``["smollm2=profiles/cpu-avx2/x.json"]`` -> {"smollm2": Path(...)}."""
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--model {value!r}: give NAME=PROFILE.json, e.g. --model smollm2=profiles/cpu-avx2/llama-....json")
        out[name] = Path(path)
    return out


def simulate(
    workload: Annotated[Path, typer.Option(help="The JSONL workload to replay (with SLOs), e.g. from `muxd bench mux --save-workload`.")],
    model: Annotated[list[str], typer.Option(help="NAME=PROFILE.json of a model of the workload, repeatable.")],
    policies: Annotated[str, typer.Option(help="Comma list of scheduling policies.")] = "adbs,spatial,temporal",
    kv_cache_mb: Annotated[int, typer.Option(min=1, help="KV pool of the unit, MiB.")] = 512,
    slots: Annotated[int, typer.Option(min=1, help="The unit's compute slots (CPU: cores; default: this machine's).")] = 0,
    drain: Annotated[float | None, typer.Option(help="Seconds after the last arrival before unfinished requests count as misses (default: the workload's span, as bench mux).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Also print the report as one JSON line, last.")] = False,
) -> None:
    """Replay a workload on one simulated unit of profiled models under each policy; bench mux's table."""
    from rich.console import Console

    from muxd.cli.bench_mux import parse_policies, results_table
    from muxd.errors import MuxdError
    from muxd.placement.cost_model import load_profile
    from muxd.placement.simulator import simulate_policies
    from muxd.workload import load

    try:
        chosen = parse_policies(policies)
        profiles = {name: load_profile(path) for name, path in parse_profiles(model).items()}
        requests = load(workload)
    except (ValueError, OSError, MuxdError) as e:
        exit_with(getattr(e, "message", None) or str(e))
    unknown = sorted({r.model for r in requests} - set(profiles))
    if unknown:
        exit_with(f"the workload's model(s) {', '.join(unknown)} have no --model NAME=PROFILE.json")
    span = max((r.arrival_s for r in requests), default=0.0)
    report = simulate_policies(profiles, requests, chosen, kv_cache_mb << 20, slots or os.cpu_count() or 1,
                               deadline_s=span + (span if drain is None else drain))  # fmt: skip
    Console().print(results_table(report))
    if as_json:
        typer.echo(json.dumps(report))

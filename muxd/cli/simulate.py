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
    workload: Annotated[Path | None, typer.Option(help="The JSONL workload to replay (with SLOs), e.g. from `muxd bench mux --save-workload`.")] = None,
    model: Annotated[list[str] | None, typer.Option(help="NAME=PROFILE.json of a model of the workload, repeatable.")] = None,
    paper: Annotated[bool, typer.Option("--paper", help="The paper's synthetic experiment: 19 LLaMA models on 32 A100s, muxd against spatial and temporal.")] = False,
    cost_file: Annotated[Path | None, typer.Option(help="With --paper: the MuxServe A100 cost file (llama.json of hao-ai-lab/MuxServe).")] = None,
    alphas: Annotated[str, typer.Option(help="With --paper: comma list of popularity exponents.")] = "0.7,0.9,1.3,1.7,2.1",
    duration: Annotated[float, typer.Option(min=1, help="With --paper: seconds of arrivals per run.")] = 60.0,
    rate_scale: Annotated[float, typer.Option(min=0.01, help="With --paper: × the most popular model's 40 req/s.")] = 1.0,
    policies: Annotated[str, typer.Option(help="Comma list of scheduling policies.")] = "adbs,spatial,temporal",
    kv_cache_mb: Annotated[int, typer.Option(min=1, help="KV pool of the unit, MiB.")] = 512,
    slots: Annotated[int, typer.Option(min=0, help="The unit's compute slots (CPU: cores; 0: this machine's).")] = 0,
    drain: Annotated[float | None, typer.Option(help="Seconds after the last arrival before unfinished requests count as misses (default: the workload's span, as bench mux).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Also print the report as one JSON line, last.")] = False,
) -> None:
    """Replay a workload on one simulated unit of profiled models under each policy (bench mux's table), or --paper."""
    from rich.console import Console

    if paper:
        return _paper(cost_file, alphas, duration, rate_scale, as_json)
    if workload is None or not model:
        exit_with("give --workload FILE and --model NAME=PROFILE.json (one per model of the workload), or --paper")

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


def _paper(cost_file: Path | None, alphas: str, duration: float, rate_scale: float, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from muxd.errors import MuxdError
    from muxd.placement.cost_model import CostModel
    from muxd.placement.paper import run_alpha

    if cost_file is None:
        exit_with("--paper needs --cost-file PATH: the MuxServe A100 cost file (llama.json of hao-ai-lab/MuxServe)")
    try:
        values = [float(a) for a in alphas.split(",") if a.strip()]
        costs = CostModel.from_muxserve_file(cost_file)
    except ValueError as e:
        exit_with(f"--alphas {alphas!r}: {e}")
    except MuxdError as e:
        exit_with(e.message)
    console = Console(stderr=True)
    results = []
    for alpha in values:
        with console.status(f"alpha {alpha}: planning and simulating muxd, spatial and temporal"):
            results.append(run_alpha(costs, alpha, duration, rate_scale=rate_scale))
    table = Table(title=f"the paper's 19 models on 32 A100s, {duration:.0f} s of arrivals (simulated)")
    for header in ("alpha", "offered", "muxd", "spatial", "temporal", "muxd/\nspatial", "muxd/\ntemporal",
                   "in window:\nmuxd/spatial", "muxd/\ntemporal", "SLO@5\nmuxd", "spatial", "temporal"):  # fmt: skip
        table.add_column(header, justify="right")
    for r in results:
        table.add_row(f"{r['alpha']}", f"{r['rate_req_s']:.1f}",
                      *(f"{r[k]['throughput_req_s']:.1f}" for k in ("muxd", "spatial", "temporal")),
                      f"{r['ratio_throughput_vs_spatial']:.2f}x", f"{r['ratio_throughput_vs_temporal']:.2f}x",
                      f"{r['ratio_in_window_vs_spatial']:.2f}x", f"{r['ratio_in_window_vs_temporal']:.2f}x",
                      *(f"{r[k]['slo_attainment'][5]:.0%}" for k in ("muxd", "spatial", "temporal")))  # fmt: skip
    table.caption = "req/s: finished over the time to the last one; in window: finished while requests arrive"
    Console().print(table)
    if as_json:
        typer.echo(json.dumps({"paper": True, "duration_s": duration, "rate_scale": rate_scale, "alphas": results}))

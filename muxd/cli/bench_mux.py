"""``muxd bench mux``: one multi-model workload under each scheduling policy.

Registered on ``muxd bench`` by ``register(app)``. Torch is imported only
inside the bench's functions, so registering it costs ``muxd --help``
nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from muxd.bench import mux as bench  # torch-free at import; it loads torch inside its functions
from muxd.cli.common import exit_with, parse_model_specs


def register(app: typer.Typer) -> None:
    """Add the ``mux`` command to the ``muxd bench`` sub-app."""
    app.command("mux")(mux)


def parse_models(values: list[str]) -> dict[str, Path]:
    """``--models NAME=PATH``, repeatable, most popular first (see ``common.parse_model_specs``)."""
    return parse_model_specs(values, flag="--models")


def parse_policies(value: str) -> tuple[str, ...]:
    policies = tuple(p.strip() for p in value.split(",") if p.strip())
    if not policies:
        raise ValueError("--policies needs at least one policy, e.g. --policies adbs,spatial,temporal")
    return policies


def mux(
    models: Annotated[
        list[str] | None,
        typer.Option(help="NAME=PATH of a model, repeatable, most popular first (default: SmolLM2-135M and "
                     "three random 13-48 M models); PATH random:llama-3.1-8b etc. makes random weights on the device."),
    ] = None,
    alpha: Annotated[
        float, typer.Option(min=0, help="Popularity power law: rate of the k-th model ∝ k^-alpha.")
    ] = bench.DEFAULT_ALPHA,
    rate: Annotated[float, typer.Option(min=0.001, help="Total request rate, req/s.")] = bench.DEFAULT_RATE,
    duration: Annotated[
        float, typer.Option(min=0.1, help="Seconds of arrivals per policy.")
    ] = bench.DEFAULT_DURATION_S,
    length_scale: Annotated[
        float, typer.Option(min=0.001, help="Shrinks ShareGPT's lengths (means 161 prompt, 338 output tokens).")
    ] = bench.DEFAULT_LENGTH_SCALE,
    slo_scale: Annotated[
        float, typer.Option(min=0.001, help="SLO = this × the request's latency served alone.")
    ] = bench.DEFAULT_SLO_SCALE,
    policies: Annotated[
        str, typer.Option(help="Comma list of scheduling policies to compare.")
    ] = ",".join(bench.DEFAULT_POLICIES),
    seed: Annotated[int, typer.Option(help="Seed of the workload and the prompts.")] = 0,
    workload: Annotated[Path | None, typer.Option(help="Replay this JSONL workload instead of generating one.")] = None,
    save_workload: Annotated[Path | None, typer.Option(help="Write the replayed workload (with SLOs) as JSONL.")] = None,
    find_max_rate: Annotated[
        bool, typer.Option("--find-max-rate", help="Also search the highest rate each policy holds at 99% SLO.")
    ] = False,
    dtype: Annotated[str, typer.Option(help="Weight dtype: bfloat16, float32 or float16.")] = bench.DEFAULT_DTYPE,
    quantization: Annotated[str, typer.Option(help="none, auto, q8 (CPU), int8, nf4 or fp4, as a model's config.")] = "none",
    kv_cache_mb: Annotated[int, typer.Option(min=1, help="KV pool size of the unit, MiB.")] = bench.DEFAULT_KV_CACHE_BYTES >> 20,
    device: Annotated[str, typer.Option(help="The unit's device: cpu or cuda (compute shares as green contexts).")] = "cpu",
    green_contexts: Annotated[
        bool,
        typer.Option(
            "--green-contexts/--plain-streams",
            help="CUDA: compute shares as green contexts (default), or plain streams sharing every SM.",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Also print the results as one JSON line, last.")] = False,
) -> None:
    """ADBS against the spatial and temporal baselines: the same workload and models under each policy."""
    from rich.console import Console

    from muxd.errors import MuxdError
    from muxd.workload import load

    try:
        chosen = parse_policies(policies)
        paths = parse_models(models) if models else None
        requests = load(workload) if workload is not None else None
    except (ValueError, OSError) as e:
        exit_with(str(e))
    status_console = Console(stderr=True)
    try:
        with status_console.status("preparing") as status:
            say = lambda msg: status.update(msg)  # noqa: E731
            report = bench.run_mux_bench(
                paths or bench.default_model_paths(say),
                policies=chosen,
                rate=rate,
                duration_s=duration,
                alpha=alpha,
                length_scale=length_scale,
                slo_scale=slo_scale,
                seed=seed,
                dtype=dtype,
                quantization=quantization,
                requests=requests,
                save_workload=save_workload,
                find_max_rate=find_max_rate,
                kv_cache_bytes=kv_cache_mb << 20,
                progress=say,
                device=device,
                green_contexts=green_contexts,
            )
    except (MuxdError, ValueError, KeyError) as e:
        exit_with(getattr(e, "message", None) or str(e))
    Console().print(results_table(report))
    if as_json:
        typer.echo(json.dumps(report))


def results_table(report: dict[str, Any]):
    """One row per policy: throughput, SLO attainment, latency percentiles (and the max rate)."""
    from rich import box
    from rich.table import Table

    w = report["workload"]
    ratios = ", ".join(
        f"{key.removeprefix('ratio_').replace('_', ' ')} {report[key]:.2f}x"
        for key in ("ratio_throughput_vs_spatial", "ratio_throughput_vs_temporal", "ratio_max_rate_vs_best_baseline")
        if report.get(key) is not None
    )
    alpha = "" if w.get("alpha") is None else f"alpha {w['alpha']}, "
    table = Table(
        box=box.SIMPLE_HEAD,
        title=(
            f"{len(report['models'])} models, {w['requests']} requests at {w['rate_req_s']:.2f} req/s, "
            f"{alpha}{w['mean_prompt_tokens']:.0f} + {w['mean_output_tokens']:.0f} tokens on average"
        ),
        caption=(
            (f"SLO = {report['slo_scale']}x the latency served alone" if isinstance(report.get("slo_scale"), float)
             else "SLO: each request's own, from the workload") + "; TTFT in s, TPOT in ms"
            + (f"; adbs {ratios}" if ratios else "")
        ),
    )
    columns = [
        ("req/s", "throughput_req_s", "{:.2f}"),
        ("tok/s", "throughput_tok_s", "{:.0f}"),
        ("SLO\nmet", "slo_attainment", "{:.0%}"),
        ("done", "finished", "{}"),
        ("TTFT\np50", "ttft_p50_s", "{:.2f}"),
        ("TTFT\np99", "ttft_p99_s", "{:.2f}"),
        ("TPOT\np50", "tpot_p50_ms", "{:.0f}"),
        ("TPOT\np99", "tpot_p99_ms", "{:.0f}"),
    ]
    if any("max_rate_req_s" in row for row in report["policies"].values()):
        columns.append(("max rate\n@99% SLO", "max_rate_req_s", "{:.2f}"))
    table.add_column("policy", no_wrap=True)
    for header, _, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for policy, row in report["policies"].items():
        row = {**row, **{f"tpot_{q}_ms": _ms(row.get(f"tpot_{q}_s")) for q in ("p50", "p99")}}
        table.add_row(policy, *("-" if row.get(k) is None else fmt.format(row[k]) for _, k, fmt in columns))
    return table


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3

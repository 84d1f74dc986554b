"""``muxd plan``: where models should run, with what shares and quotas, and why (``muxd.placement.planner``)."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from muxd.cli.common import exit_with

if TYPE_CHECKING:
    from muxd.placement.model_spec import ModelSpec
    from muxd.placement.plan import Plan


def plan(
    paper: Annotated[bool, typer.Option("--paper", help="The paper's 19 LLaMA models (12x7B, 4x13B, 2x30B, 1x65B), "
                                        "rates ∝ k^-alpha, on 32 A100-80GB in 4 nodes.")] = False,
    cost_file: Annotated[Path | None, typer.Option(help="MuxServe's cost file (model -> GPUs -> SM % -> ...).")] = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="NAME=DIR[,rate=R]: a model (repeatable); with --cost-file also [,cost=COSTNAME], "
        "on this machine also [,quantization=Q][,dtype=D].")] = None,
    devices: Annotated[str | None, typer.Option(help="COUNTxKIND-MEMGB, e.g. 32xA100-80GB (--paper: that).")] = None,
    nodes: Annotated[int, typer.Option(min=1, help="Nodes the devices are spread over, equally.")] = 1,
    alpha: Annotated[float, typer.Option(min=0, help="--paper: popularity exponent of the rates.")] = 0.9,
    max_rate: Annotated[float, typer.Option(min=0, help="--paper: the most popular model's req/s.")] = 40.0,
    slo_scale: Annotated[float, typer.Option(min=0.1, help="SLO = this x the latency served alone.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    objective: Annotated[str | None, typer.Option(help="goodput (requests/s within SLO) or throughput first "
                                                   "(default: goodput; --paper: throughput, as MuxServe).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="This machine: the models of this "
                                                "muxd.toml (default: muxd serve's config, else the demo).")] = None,
    profiles: Annotated[Path | None, typer.Option(help="This machine: look for profiles here first.")] = None,
) -> None:
    """Plan which models share which devices (MuxServe's greedy placement) and print the plan and its reasons.

    Without --cost-file, --paper or --devices: the models `muxd serve` would serve, on this machine,
    costed by muxd's profiles (what `placement = "auto"` serves)."""
    if cost_file is None and not paper and devices is None:
        _plan_local(config, model or [], profiles, as_json, objective or "goodput")
        return
    from muxd.placement.cluster import Cluster
    from muxd.placement.cost_model import CostModel
    from muxd.placement.model_spec import paper_models
    from muxd.placement.planner import Planner

    if cost_file is None:
        exit_with("--paper and --devices plan hardware described here: give --cost-file PATH (e.g. "
                  "../shared/data/muxserve-llama-a100-cost.json); without them muxd plan plans this machine")
    if paper and model:
        exit_with("give --paper or --model, not both")
    if not paper and not model:
        exit_with("give --paper, or the models to place with --model NAME=CONFIG_DIR[,rate=R]")
    if paper and devices is None:
        devices, nodes = "32xA100-80GB", 4
    if devices is None:
        exit_with("with --cost-file, give --devices COUNTxKIND-MEMGB (e.g. --devices 8xA100-80GB)")

    def make() -> tuple[Plan, list[str]]:
        cluster = Cluster.parse(devices, nodes)
        specs = paper_models(alpha, max_rate, slo_scale) if paper else _models(model or [], slo_scale)
        costs = CostModel.from_muxserve_file(cost_file)
        return Planner(costs, cluster, objective=objective or ("throughput" if paper else "goodput")).plan(specs), []

    _show(make, as_json)


def _plan_local(config: Path | None, models: list[str], profiles: Path | None, as_json: bool,
                objective: str) -> None:
    from muxd.cli.serve import prepare_demo
    from muxd.config import Flags, resolve
    from muxd.engine import cpu_isa
    from muxd.placement.local import local_machine, plan_local, planned_models

    def make() -> tuple[Plan, list[str]]:
        daemon = resolve(Flags(config=config, models=tuple(models)), demo=prepare_demo)
        machine = local_machine(daemon, cpu_isa.selected().name)
        return plan_local(planned_models(daemon), machine, daemon.units[0], [profiles] if profiles else [],
                          objective=objective)

    _show(make, as_json)


def _show(make: Callable[[], tuple[Plan, list[str]]], as_json: bool) -> None:
    """Print the plan ``make()`` returns (a table and its notes, or JSON); its errors as one line."""
    from muxd.errors import MuxdError

    try:
        result, notes = make()
    except ValueError as e:
        exit_with(str(e))
    except MuxdError as e:
        exit_with(e.message)
    if as_json:
        typer.echo(result.model_dump_json(indent=1))
        return
    _print(result)
    for note in notes:
        typer.echo(f"note: {note}")


def _models(flags: list[str], slo_scale: float) -> list[ModelSpec]:
    """``NAME=CONFIG_DIR[,rate=R][,cost=COSTNAME]`` flags as model specs, sizes from each config.json."""
    from muxd.placement.model_spec import ModelSpec

    specs = []
    for flag in flags:
        name, sep, rest = flag.partition("=")
        path, *options = rest.split(",")
        if not sep or not name or not path:
            raise ValueError(f"--model {flag!r} is not NAME=CONFIG_DIR[,rate=R][,cost=COSTNAME]")
        opts = dict(o.partition("=")[::2] for o in options)
        unknown = set(opts) - {"rate", "cost"}
        if unknown:
            raise ValueError(f"--model {flag!r}: unknown option(s) {', '.join(sorted(unknown))}; known: rate, cost")
        config_path = Path(path).expanduser() / "config.json"
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--model {name}: cannot read {config_path}: {e}") from None
        specs.append(ModelSpec.from_hf_config(name, config, rate=float(opts.get("rate", 1.0)),
                                              cost_name=opts.get("cost"), slo_scale=slo_scale))
    return specs


def _print(result: Plan) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped: wide enough for the table, not wrapped at 80 columns
        console = Console(width=150)
    table = Table(title=f"muxd plan: {result.cluster}, best of {result.groupings_tried} groupings", title_justify="left")
    for column in ("unit", "model", "TP", "rate", "prefill/decode", "KV quota", "batch", "req/s", "tok/s",
                   "SLO"):
        table.add_column(column, justify="left" if column in ("unit", "model") else "right")
    for unit in result.units:
        for i, m in enumerate(unit.models):
            slo = f"{m.slo_attainment:.0%}"
            table.add_row(unit.name if i == 0 else "", m.name, str(m.tp), f"{m.rate:.2f}",
                          f"{m.prefill_share:.0%} / {m.decode_share:.0%}",
                          f"{m.kv_quota_bytes / 2**30:.1f} GiB ({m.kv_quota_pages:,} p)", str(m.batch),
                          f"{m.expected_rps:.2f}", f"{m.expected_tokens_s:,.0f}",
                          slo if m.meets_slo else f"[red]{slo}[/red]", end_section=i == len(unit.models) - 1)
    console.print(table)
    rate = sum(m.rate for u in result.units for m in u.models)
    console.print(f"expected: {result.expected_rps:.2f} of {rate:.2f} req/s, {result.expected_tokens_s:,.0f} tok/s, "
                  f"{result.goodput_rps:.2f} req/s within SLO" + (f"; not placed: {', '.join(result.unplaced)}"
                                                                  if result.unplaced else ""))
    for line in result.decisions:
        console.print(f"- {line}", highlight=False)

"""``muxd profile``: measure the cost model's figures of models on this machine (``muxd/profile.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from muxd.cli.common import FAILURE, exit_with
from muxd.errors import MuxdError


def profile(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="NAME=PATH[,dtype=..][,quantization=..]; repeatable (default: the demo models)."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda:N or auto.")] = "auto",
    out: Annotated[Path, typer.Option(help="Root of the profiles: writes OUT/<device-kind>/<signature>.json.")] = Path(
        "profiles"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="A small grid in seconds (tests, CI), not minutes.")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="Compute threads, as `muxd serve --threads`.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON line of what was written.")] = False,
) -> None:
    """Measure prefill and decode latencies (every compute share, batch, length), a prefill beside a
    decode, and memory, through the serving engine; write one profile per model."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from muxd import profile as profiler
    from muxd.config import DEMO_CPU, DEMO_GPU, ModelConfig, detect_device, parse_model_flag

    console = Console(stderr=True)
    device = detect_device() if device == "auto" else device
    try:
        if model:
            tables = [parse_model_flag(spec) for spec in model]
        else:
            paths = _demo_paths()
            precision = DEMO_CPU if device == "cpu" else DEMO_GPU
            tables = [{"name": name, "path": path, **precision} for name, path in paths.items()]
        models = [ModelConfig(**{k: v for k, v in t.items() if k != "device"}) for t in tables]
    except (MuxdError, ValueError, TypeError) as e:
        exit_with(getattr(e, "message", None) or str(e))

    columns = (TextColumn("{task.fields[model]:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))  # fmt: skip
    with Progress(*columns, console=console) as bar:

        def progress(name: str):
            task = bar.add_task("loading", model=name, total=None)
            return lambda what, done, total: bar.update(task, description=what, completed=done, total=total)

        try:
            grid = profiler.QUICK if quick else profiler.DEFAULT
            written = profiler.profile_models(models, out, device=device, grid=grid, threads=threads,
                                              progress=progress)  # fmt: skip
        except (MuxdError, ValueError, RuntimeError) as e:
            exit_with(getattr(e, "message", None) or str(e), code=FAILURE)
    for w in written:
        extra = w.profile.provenance.model_extra or {}
        if extra.get("contended_points"):
            console.print(f"[yellow]warning:[/] {w.name}: other processes kept {extra['other_cores']} cores busy on "
                          f"average; {extra['contended_points']} points were measured under contention even after "
                          "retries, so they read slow. Re-run on a quiet machine.")  # fmt: skip
    if not json_output:
        for w in written:
            typer.echo(f"{w.name}: {w.path} ({w.seconds:.0f} s)")
    else:
        typer.echo(json.dumps([{"model": w.name, "path": str(w.path), "device_kind": w.profile.device_kind,
                                "signature": w.profile.model_signature, "seconds": round(w.seconds, 1)}
                               for w in written]))  # fmt: skip


def _demo_paths() -> dict[str, str]:
    """The demo models, made first if missing (as ``muxd serve`` does)."""
    from muxd.cli.serve import prepare_demo

    return prepare_demo()

"""``muxd serve``: resolve the configuration, prepare the demo if needed, run the daemon.

With no models configured (no ``[[models]]`` in the config file, no
``--model``), the embedded demo default is served. Its models are built,
once, in a *child process*: building needs torch and transformers, and the
daemon's front end must not hold them (about 300 MB and 2 s of start-up,
for nothing: it only tokenizes and routes). Every later start finds the
models on disk and spawns nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from muxd.cli.common import FAILURE, exit_with
from muxd.errors import MuxdError

if TYPE_CHECKING:
    from muxd.config import DaemonConfig


def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config (default: $XDG_CONFIG_HOME/muxd/muxd.toml).")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="NAME=PATH of a model directory or GGUF file; repeatable.")
    ] = None,
    socket: Annotated[Path | None, typer.Option(help="Unix socket (default: $XDG_RUNTIME_DIR/muxd/muxd.sock).")] = None,
    tcp: Annotated[str | None, typer.Option(help="Also listen on HOST:PORT (no authentication).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda:N or auto (the default).")] = None,
    kv_cache_mb: Annotated[int | None, typer.Option(min=1, help="KV-cache pool of each unit, MiB.")] = None,
    queue_per_model: Annotated[int | None, typer.Option(min=1, help="Requests in flight per model before 429.")] = None,
    drain_timeout: Annotated[float | None, typer.Option(min=0, help="Seconds in-flight requests get on SIGTERM.")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Compute threads of each unit process.")] = None,
    models_dir: Annotated[
        Path | None, typer.Option(help="The model library: its HF directories and GGUF files load on demand.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
    placement: Annotated[str | None, typer.Option(
        help="auto: units from a plan of this machine (muxd plan shows it); manual: [[units]] or one per device.")] = None,
) -> None:
    """Start the daemon: an OpenAI-compatible API on a Unix socket, one process per unit."""
    from muxd.config import Flags, resolve
    from muxd.server.daemon import serve as run_daemon
    from muxd.server.daemon import setup_logging
    from muxd.server.uds import claim

    flags = Flags(
        config=config, models=tuple(model or ()), socket=socket, tcp=tcp, log_level=log_level,
        queue_per_model=queue_per_model, drain_timeout_s=drain_timeout, device=device, kv_cache_mb=kv_cache_mb,
        threads=threads, models_dir=models_dir, placement=placement,
    )  # fmt: skip
    try:
        daemon_config = resolve(flags, demo=prepare_demo)
        if daemon_config.placement == "auto":
            setup_logging(daemon_config.log_level)
            daemon_config = place_automatically(daemon_config)
        held = claim(daemon_config.socket)
    except MuxdError as e:
        exit_with(e.message, code=FAILURE)
    try:
        code = run_daemon(daemon_config, held)
    except MuxdError as e:
        exit_with(e.message, code=FAILURE)
    raise typer.Exit(code=code)


def place_automatically(config: DaemonConfig) -> DaemonConfig:
    """The config with its units from a plan of this machine (``placement = "auto"``), the plan's reasons logged."""
    import logging

    from muxd.engine import cpu_isa
    from muxd.placement.local import auto_place

    placed, plan, notes = auto_place(config, cpu_isa.selected().name)
    log = logging.getLogger("muxd.placement")
    for note in notes:
        log.warning("%s", note)
    for decision in plan.decisions:
        log.info("%s", decision)
    for unit in placed.units:
        log.info("unit %s on %s: %s, pool %d MiB", unit.name, unit.device,
                 ", ".join(m.name for m in unit.models), unit.kv_cache_bytes >> 20)
    return placed


def prepare_demo() -> dict[str, str]:
    """The demo models' paths, building any that is missing in a child process (with a progress line)."""
    import multiprocessing as mp

    from rich.console import Console

    from muxd.models.demo import demo_ready, prepare_in_child

    ready = demo_ready()
    if ready is not None:
        return ready
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=prepare_in_child, args=(None, child), name="muxd-demo-prepare")
    console = Console(stderr=True)
    with console.status("preparing the demo models (first run only)") as status:
        proc.start()
        child.close()
        result: tuple[str, object] = ("error", "the preparing process died")
        while True:
            try:
                kind, payload = parent.recv()
            except EOFError:
                break
            if kind == "progress":
                status.update(str(payload))
                if str(payload).startswith("note:"):
                    console.print(str(payload))
            else:
                result = (kind, payload)
        proc.join()
    kind, payload = result
    if kind != "done":
        raise MuxdErrorFromChild(f"could not prepare the demo models: {payload}")
    return dict(payload)  # type: ignore[arg-type]


class MuxdErrorFromChild(MuxdError):
    code = "demo_prepare_failed"

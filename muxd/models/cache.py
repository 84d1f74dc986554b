"""Model directories in the muxd cache, built once and atomically.

A model is built into a temporary sibling directory and renamed into place,
so the target either does not exist or is complete: an interrupted build
leaves no half model behind, and two racing builds both end with one
complete directory (the loser's rename fails and its staging is removed).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def is_built(target: Path) -> bool:
    """Whether ``target`` holds a finished model (its ``config.json`` is written last, by the rename)."""
    return (target / "config.json").is_file()


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """Return ``target``, first calling ``build(staging)`` and renaming staging into place unless it is built."""
    if is_built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it 0700; a model is not a secret
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:
            if not is_built(target):  # not a racing build that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

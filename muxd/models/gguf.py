"""GGUF files as muxd models: converted once into the cache, as the demo's SmolLM2 is.

muxd's forward reads Hugging Face safetensors, so a GGUF file (a library
entry, or ``--model NAME=/path/x.gguf``) is dequantized through
transformers' GGUF loader and saved as a Hugging Face directory under
``<cache>/models/gguf/``, keyed by the file's path, size and modification
time: a changed file is converted again, an unchanged one never. The
conversion is ``smollm2.convert_gguf``, the demo's own, and goes through
``cache.build_once`` (no half directory is ever left behind).
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from muxd.errors import ModelLoadError
from muxd.models.cache import build_once, is_built
from muxd.models.smollm2 import CONVERTER_PACKAGES, convert_gguf
from muxd.paths import cache_dir as default_cache_dir


def converted_dir(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Where ``gguf``'s conversion lives: ``<cache>/models/gguf/<stem>-<key>``."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return (cache_dir or default_cache_dir()) / "models" / "gguf" / f"{gguf.resolve().stem}-{key}"


def ensure_converted(
    gguf: Path, cache_dir: Path | None = None, progress: Callable[[str], None] | None = None
) -> Path:
    """The Hugging Face directory of ``gguf``, converting it on first use."""
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {gguf} does not exist")
    target = converted_dir(gguf, cache_dir)
    if is_built(target):
        return target
    missing = [name for name in CONVERTER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelLoadError(f"converting {gguf.name} needs {' and '.join(missing)}; run: pip install {' '.join(missing)}")
    say = progress or (lambda _msg: None)
    try:
        return build_once(target, lambda staging: convert_gguf(gguf, staging, say))
    except (ValueError, KeyError, OSError) as e:
        raise ModelLoadError(f"cannot convert {gguf}: {type(e).__name__}: {e}") from None

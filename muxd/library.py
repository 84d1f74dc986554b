"""The model library: every model a ``models_dir`` holds, known before any is loaded.

A library entry is a Hugging Face model directory (``config.json`` plus
safetensors) or a GGUF file, named after the directory or the file (less
``.gguf``). ``scan`` only lists and stats files, so ``/v1/models`` can show
fifty entries at once. What the engine and the memory budget need before a
first load is read from file headers, never from a name: the attention
head width (the KV pool's page is sized for the widest model a unit may
ever load) and the parameter count (a model's weight bytes are estimated
from it until a load measures them). No torch here: the front end uses it.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

log = logging.getLogger("muxd.library")

GGUF_SUFFIX = ".gguf"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# q8 weights take 34 bytes per 32 (an fp16 scale per group of 32 int8s).
Q8_BYTES = 34 / 32


@dataclass(frozen=True)
class LibraryEntry:
    """One model on disk: its name, where it is, what kind, how many bytes its files take."""

    name: str
    path: Path
    kind: Literal["hf", "gguf"]
    file_bytes: int


def default_models_dir(env: dict[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/muxd/models``, else ``~/.local/share/muxd/models``."""
    e = os.environ if env is None else env
    data = e.get("XDG_DATA_HOME", "")
    home = Path(e["HOME"]) if e.get("HOME") else Path.home()
    return (Path(data) if data and os.path.isabs(data) else home / ".local" / "share") / "muxd" / "models"


def scan(models_dir: Path) -> list[LibraryEntry]:
    """The models in ``models_dir``, sorted by name; a missing directory is an empty library.

    Hidden entries (a conversion's ``.partial`` staging) are skipped; of two
    entries with one name (``x/`` and ``x.gguf``) the directory wins.
    """
    try:
        items = sorted(os.scandir(models_dir), key=lambda d: d.name)
    except FileNotFoundError:
        return []
    entries: dict[str, LibraryEntry] = {}
    for item in items:
        if item.name.startswith("."):
            continue
        entry = _entry(item)
        if entry is None:
            continue
        if entry.name in entries:
            log.warning("library %s: %s and %s share the name %r; serving the directory",
                        models_dir, entries[entry.name].path.name, item.name, entry.name)  # fmt: skip
            if entry.kind == "gguf":
                continue
        entries[entry.name] = entry
    return sorted(entries.values(), key=lambda e: e.name)


def _entry(item: os.DirEntry[str]) -> LibraryEntry | None:
    path = Path(item.path)
    if item.is_dir() and (path / "config.json").is_file():
        return LibraryEntry(item.name, path, "hf", file_bytes(path))
    if item.is_file() and item.name.endswith(GGUF_SUFFIX) and len(item.name) > len(GGUF_SUFFIX):
        return LibraryEntry(item.name[: -len(GGUF_SUFFIX)], path, "gguf", item.stat().st_size)
    return None


def file_bytes(path: str | Path) -> int:
    """Bytes a model's files take on disk: a GGUF file, or a directory's files (not recursive)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in os.scandir(p) if f.is_file())


def is_gguf(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix == GGUF_SUFFIX and p.is_file()


# -- shapes read from headers ----------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """What a model's files say about it without loading a weight."""

    head_dim: int
    params: int  # parameters stored in its weight files
    embed_params: int  # of which the token embedding (a q8 model keeps it in its dtype)
    vector_params: int = 0  # of which 1-D tensors: norms and biases (never quantized)


def model_shape(path: str | Path) -> ModelShape:
    """Read the shape of a Hugging Face directory or a GGUF file; raise ValueError saying why not."""
    p = Path(path)
    if p.is_file() and p.suffix == GGUF_SUFFIX:
        return _gguf_shape(p)
    return _hf_shape(p)


def estimate_weight_bytes(shape: ModelShape, dtype: str, quantization: str) -> int:
    """Bytes the weights will take once loaded in ``dtype`` (an upper bound for q8 and "auto").

    A q8 model's linears take ``Q8_BYTES`` a parameter, its embedding its
    dtype; a tied head becomes a q8 layer of its own, so q8 may add one
    embedding's worth; "auto" may pick either, so it takes the larger.
    """
    full = shape.params * DTYPE_BYTES[dtype]
    if quantization in ("none", "int8", "nf4", "fp4"):
        return full  # bitsandbytes keeps embedding and head full: at most this
    linears = shape.params - shape.embed_params - shape.vector_params
    kept = shape.embed_params + shape.vector_params  # in the model's dtype
    q8 = int(linears * Q8_BYTES + kept * DTYPE_BYTES[dtype] + shape.embed_params * Q8_BYTES)
    return q8 if quantization == "q8" else max(full, q8)


def _hf_shape(path: Path) -> ModelShape:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read config.json ({e})") from None
    config = config.get("text_config", config)
    heads = int(config.get("num_attention_heads") or 1)
    head_dim = int(config.get("head_dim") or int(config.get("hidden_size", 0)) // heads)
    params = embed = vectors = 0
    for f in sorted(path.glob("*.safetensors")):
        for name, info in _safetensors_header(f).items():
            if name == "__metadata__":
                continue
            n = _prod(info["shape"])
            params += n
            embed += n if name.endswith("embed_tokens.weight") else 0
            vectors += n if len(info["shape"]) == 1 else 0
    if head_dim <= 0 or params == 0:
        raise ValueError(f"{path}: no head width in config.json or no weights in *.safetensors")
    return ModelShape(head_dim, params, embed, vectors)


def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(size))


def _prod(dims: list[int]) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


# -- GGUF (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) ---------------
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def _gguf_shape(path: Path) -> ModelShape:
    meta, tensors = read_gguf_header(path)
    arch = meta.get("general.architecture")
    heads = meta.get(f"{arch}.attention.head_count")
    width = meta.get(f"{arch}.embedding_length")
    head_dim = meta.get(f"{arch}.attention.key_length") or (width // heads if heads and width else 0)
    params = sum(_prod(dims) for dims in tensors.values())
    embed = _prod(tensors.get("token_embd.weight", [0]))
    vectors = sum(_prod(dims) for dims in tensors.values() if len(dims) == 1)
    if not head_dim or not params:
        raise ValueError(f"{path}: the GGUF header names no attention head width or no tensors")
    return ModelShape(int(head_dim), params, embed, vectors)


def read_gguf_header(path: Path) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """A GGUF file's metadata (arrays skipped: the vocabulary is not needed here) and tensor shapes."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic)")
        version, n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 or later)")
        meta = {}
        for _ in range(n_kv):
            key = _gguf_string(f)
            meta[key] = _gguf_value(f, struct.unpack("<I", f.read(4))[0])
        tensors = {}
        for _ in range(n_tensors):
            name = _gguf_string(f)
            (n_dims,) = struct.unpack("<I", f.read(4))
            tensors[name] = list(struct.unpack(f"<{n_dims}Q", f.read(8 * n_dims)))
            f.read(12)  # type (u32) and offset (u64)
    return meta, tensors


def _gguf_string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8", errors="replace")


def _gguf_value(f: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        return _gguf_string(f)
    if kind == _ARRAY:
        item, count = struct.unpack("<IQ", f.read(12))
        if item in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[item]) * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _gguf_value(f, item)
        return None
    fmt = _SCALARS.get(kind)
    if fmt is None:
        raise ValueError(f"unknown GGUF value type {kind}")
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

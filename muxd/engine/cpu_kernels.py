"""muxd's CPU kernels in C (``engine/kernels/*.c``), built on first use, one build per instruction set.

Why C: a batch-1 decode step on a CPU is bound by memory bandwidth and by
the dispatch of a few thousand small ops. Two kernels take the biggest
shares: ``q8.c`` (int8 linears read at nearly the memory bandwidth, see
``engine/q8.py``) and ``attention.c`` (a decode step's RoPE, KV write and
attention for one layer in one call, see ``engine/attention.py``), with
``norm.c`` (RMSNorm and the residual add before it, see ``engine/model.py``),
``decode_step.c``, which runs all of a q8 model's blocks for a decode
step in one call and one thread team (``Transformer.forward``), and
``sampling.c`` (greedy tokens and log-normalisers, see ``engine/sampler.py``).

The sources ship with the package and are compiled with the system C
compiler (``$CC``, else ``cc``/``gcc``/``clang``), once per instruction set
(``engine/cpu_isa.py``: portable, AVX2, AVX-VNNI, AVX-512, AVX-512 VNNI,
NEON) into shared libraries in the cache directory, keyed by the sources,
the compiler and the flags, then loaded with ``ctypes``: a fraction of a
second once, no PyTorch headers and no build step at install. Built with
``-fopenmp``, a library links ``libgomp.so.1``, which resolves to the copy
PyTorch has already loaded: one OpenMP runtime and one thread team. Where
no compiler is found or the build fails, ``load_kernels`` returns None
(logged once) and callers take their torch path.

The C functions that take many arguments take structs (``kernels/kernels.h``),
mirrored here by ``ctypes.Structure`` classes.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from muxd.engine import cpu_isa
from muxd.paths import cache_dir

log = logging.getLogger(__name__)

KERNELS = Path(__file__).with_name("kernels")
SOURCES = tuple(KERNELS / name for name in ("q8.c", "attention.c", "norm.c", "decode_step.c", "sampling.c"))
HEADERS = (KERNELS / "common.h", KERNELS / "kernels.h", KERNELS / "simd.h")
# -ffp-contract=off: no fused multiply-adds where the C spells a product and a
# sum, so that RoPE rounds as torch does (the kernels' own FMAs are explicit).
FLAGS = ("-O3", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC")

_P, _I, _L, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float
_I64 = ctypes.c_int64


class Q8Weight(ctypes.Structure):
    """kernels.h's q8_weight_t: int8 W [N, Kp], fp16 scales [N, Kp / 32], fp32 bias [N] or None."""

    _fields_ = [("q", _P), ("scale", _P), ("bias", _P), ("N", _I64), ("K", _I64)]


class DecodeLayer(ctypes.Structure):
    """kernels.h's decode_layer_t: one block of a q8 model."""

    _fields_ = [
        ("input_norm", _P), ("qkv", Q8Weight), ("o", Q8Weight), ("post_norm", _P),
        ("gate_up", Q8Weight), ("down", Q8Weight), ("window", _I64),
    ]  # fmt: skip


class DecodeModel(ctypes.Structure):
    """kernels.h's decode_model_t: a q8 model's shapes and weights, fixed at load."""

    _fields_ = [
        ("layers", ctypes.POINTER(DecodeLayer)),
        ("L", _I64), ("H", _I64), ("I", _I64), ("Hq", _I64), ("Hkv", _I64), ("D", _I64), ("V", _I64),
        ("eps", _F), ("scale", _F), ("bf16", _I64),
        ("final_norm", _P), ("lm_head", ctypes.POINTER(Q8Weight)),
    ]  # fmt: skip


class DecodeBatch(ctypes.Structure):
    """kernels.h's decode_batch_t: one decode step's batch."""

    _fields_ = [
        ("x", _P), ("B", _I64), ("cos", _P), ("sin", _P), ("positions", _P),
        ("k_cache", _P), ("v_cache", _P), ("page_stride", _I64), ("row_stride", _I64), ("page_tokens", _I64),
        ("block_tables", _P), ("M", _I64), ("logits", _P), ("argmax", _P), ("lse", _P), ("threads", _I64),
    ]  # fmt: skip


class DecodeAttention(ctypes.Structure):
    """kernels.h's decode_attention_t: one layer's decode attention."""

    _fields_ = [
        ("qk", _P), ("qk_stride", _I64), ("v", _P), ("v_stride", _I64), ("cos", _P), ("sin", _P), ("positions", _P),
        ("k_cache", _P), ("v_cache", _P), ("page_stride", _I64), ("row_stride", _I64), ("page_tokens", _I64),
        ("write_pages", _P), ("tables", _P), ("M", _I64), ("window", _I64), ("scale", _F),
        ("B", _I64), ("Hq", _I64), ("Hkv", _I64), ("D", _I64), ("out", _P), ("bf16", _I64), ("threads", _I64),
    ]  # fmt: skip


_Q8 = ctypes.POINTER(Q8Weight)
SIGNATURES = {
    "muxd_isa": ([], ctypes.c_char_p),
    "q8_linear": ([_P, _I, _I, _Q8, _P, _I, _I, _I], _I),
    "q8_dequantize": ([_Q8, _P, _I, _I], None),
    "decode_layers": ([ctypes.POINTER(DecodeModel), ctypes.POINTER(DecodeBatch)], _I),
    "add_rms_norm": ([_P, _P, _P, _F, _I, _I, _P, _P, _I], None),
    "logits_argmax_lse": ([_P, _I, _L, _P, _P], None),
    "logits_mask_argmax": ([_P, _L, _P, _I, _P, _L, _P], None),
    "decode_attention": ([ctypes.POINTER(DecodeAttention)], _I),
}


def _compiler() -> str | None:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        if path := shutil.which(name):
            return path
    return None


def build(isa: cpu_isa.Isa, cflags: tuple[str, ...] | None = None, cc: str | None = None) -> Path | None:
    """The shared library of ``isa``'s build (with ``cflags``, by default the
    build this CPU runs), compiled into the cache if it is not there yet;
    None if it does not compile (the compiler's error logged). Every build
    compiles on any host whose compiler targets its architecture."""
    cc = cc or _compiler()
    cflags = isa.cflags() if cflags is None else cflags
    if cc is None or cflags is None:
        return None
    flags = (*FLAGS, *cflags, f'-DMUXD_ISA_NAME="{isa.name}"')
    parts = [src.read_text() for src in SOURCES + HEADERS] + [cc, " ".join(flags)]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    target = cache_dir() / "kernels" / f"muxd-cpu-{isa.name}-{key[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        command = [cc, *flags, *map(str, SOURCES), "-o", str(built), "-lm"]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            log.warning("compiling muxd's CPU kernels (%s) failed:\n%s", isa.name, run.stderr[-2000:])
            return None
        os.replace(built, target)  # atomic: a concurrent build of the same key is identical
    return target


def load_kernels(isa: str | None = None) -> ctypes.CDLL | None:
    """The compiled library for ``isa`` (default: ``cpu_isa.selected()``, the
    best this CPU runs or what ``MUXD_CPU_ISA`` names), or None where this
    machine cannot build it (callers then take their torch path)."""
    return _load((cpu_isa.BY_NAME[isa] if isa else cpu_isa.selected()).name)


@functools.cache
def _load(name: str) -> ctypes.CDLL | None:
    """One library per build, cached for the process (a loaded library stays loaded anyway)."""
    if _compiler() is None:
        log.warning("no C compiler found (set CC): muxd's CPU kernels fall back to slower torch ops")
        return None
    target = build(cpu_isa.BY_NAME[name])
    if target is None:
        log.warning("muxd's CPU kernels (%s) are not available: falling back to torch ops", name)
        return None
    lib = ctypes.CDLL(str(target))
    for function, (argtypes, restype) in SIGNATURES.items():
        getattr(lib, function).argtypes, getattr(lib, function).restype = argtypes, restype
    return lib


load_kernels.cache_clear = _load.cache_clear  # type: ignore[attr-defined]

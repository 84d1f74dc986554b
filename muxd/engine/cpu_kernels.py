"""muxd's CPU kernels in C (``engine/kernels/*.c``), built on first use.

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
compiler (``$CC``, else ``cc``/``gcc``/``clang``) into one shared library
in the cache directory, keyed by the sources, the compiler, the flags and
the CPU, then loaded with ``ctypes``: a fraction of a second once, no
PyTorch headers and no build step at install. Built with ``-fopenmp``, the
library links ``libgomp.so.1``, which resolves to the copy PyTorch has
already loaded: one OpenMP runtime and one thread team. Where no compiler
is found or the build fails, ``load_kernels`` returns None (logged once) and
callers take their torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from muxd.paths import cache_dir

log = logging.getLogger(__name__)

KERNELS = Path(__file__).with_name("kernels")
SOURCES = tuple(KERNELS / name for name in ("q8.c", "attention.c", "norm.c", "decode_step.c", "sampling.c"))
HEADERS = (KERNELS / "common.h", KERNELS / "kernels.h")
# -ffp-contract=off: no fused multiply-adds where the C spells a product and a
# sum, so that RoPE rounds as torch does (the kernels' own FMAs are explicit).
FLAGS = ("-O3", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC")
NATIVE = "-march=native"  # AVX-512 / VNNI paths where the CPU has them; without: plain C
_P, _I, _L, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float
SIGNATURES = {
    "q8_has_vnni": ([], _I),
    "q8_linear": ([_P, _I, _I, _I, _P, _P, _P, _I, _I, _P, _I, _I], _I),
    "q8_dequantize": ([_P, _P, _I, _I, _I, _P, _I, _I], None),
    "decode_layers": (
        [_P, _I, _P, _I, _I, _I, _I, _I, _I, _F, _I, _P, _P, _P, _P, _P, _L, _L, _P, _I, _I, _F, _P, _I, _P, _P, _P, _I],
        _I,
    ),
    "add_rms_norm": ([_P, _P, _P, _F, _I, _I, _P, _P, _I], None),
    "logits_argmax_lse": ([_P, _I, _L, _P, _P], None),
    "decode_attention": ([_P, _L, _P, _L, _P, _P, _P, _P, _P, _L, _L, _P, _P, _I, _I, _F, _I, _I, _I, _I, _I, _P, _I, _I], _I),
}


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
    return "\n".join(keep) or platform.machine()


def _compiler() -> str | None:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        if path := shutil.which(name):
            return path
    return None


@functools.cache
def load_kernels(native: bool = True) -> ctypes.CDLL | None:
    """The compiled library, or None where this machine cannot build it.
    Cached for the process (a loaded library stays loaded anyway).
    ``native=False`` builds the plain C paths, for tests on an AVX-512 machine."""
    flags = (*FLAGS, NATIVE) if native else FLAGS
    cc = _compiler()
    if cc is None:
        log.warning("no C compiler found (set CC): muxd's CPU kernels fall back to slower torch ops")
        return None
    parts = [src.read_text() for src in SOURCES + HEADERS] + [cc, " ".join(flags), _cpu_id()]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    target = cache_dir() / "kernels" / f"muxd-cpu-{key[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            command = [cc, *flags, *map(str, SOURCES), "-o", str(built), "-lm"]
            run = subprocess.run(command, capture_output=True, text=True)
            if run.returncode != 0:
                log.warning("compiling muxd's CPU kernels failed, falling back to torch ops:\n%s", run.stderr[-2000:])
                return None
            os.replace(built, target)  # atomic: a concurrent build of the same key is identical
    lib = ctypes.CDLL(str(target))
    for name, (argtypes, restype) in SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    return lib

"""Prepared weights: a model's tensors as the engine holds them, saved once per checkpoint and plan.

Loading a checkpoint fuses q|k|v and gate|up (a copy of most weights) and,
on a q8 plan, quantizes every linear: most of a q8 load (SmolLM2-135M: 0.6 s).
The first load at a plan saves the result (before oneDNN packing, which is
opaque) under ``cache_dir()/prepared`` as safetensors; later loads map that
file (safetensors reads with mmap, no copy) into the model's parameters and
buffers instead.

One file per checkpoint directory and plan (weights and activations dtype),
so a stale file is replaced rather than joined. Its metadata holds the full
key: the checkpoint's files (name, size, mtime), the plan, torch's version
and ``FORMAT``; a file whose key differs or that cannot be read is ignored,
and the normal load rewrites it (a temporary file renamed into place, so a
reader never sees half a file). The kernels' instruction set is not in the
key: q8's layout and rounding are the same on every ISA.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from muxd.engine.kernel_plan import KernelPlan
from muxd.paths import cache_dir

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what is saved, or how the loader reads it, changes
META_KEY = "muxd_prepared"
# Checkpoints smaller than this load in well under 0.1 s unprepared: no file for them.
MIN_BYTES = 32 << 20


@dataclass(frozen=True)
class PreparedFile:
    path: Path
    key: str  # what the file must have been made from


def applies(plan: KernelPlan) -> bool:
    """Whether a prepared file serves ``plan``: CPU plans, full precision or q8
    (bitsandbytes layers hold state that safetensors cannot)."""
    return torch.device(plan.device).type == "cpu" and plan.quantization in ("none", "q8")


def locate(checkpoint: Path, plan: KernelPlan, root: Path | None = None) -> PreparedFile | None:
    """The prepared file for ``checkpoint`` at ``plan`` (which may not exist yet),
    or None where none applies (another plan, a small checkpoint, unreadable files)."""
    if not applies(plan):
        return None
    checkpoint = checkpoint.resolve()
    try:
        files = [(f.name, (st := f.stat()).st_size, st.st_mtime_ns) for f in _sources(checkpoint)]
    except OSError:
        return None
    if sum(size for _, size, _ in files) < MIN_BYTES:
        return None
    ident = {"format": FORMAT, "checkpoint": str(checkpoint), "files": files, "weights": plan.weights,
             "dtype": plan.dtype, "torch": torch.__version__}  # fmt: skip
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    name = hashlib.sha256(f"{checkpoint}|{plan.weights}|{plan.dtype}".encode()).hexdigest()[:24]
    return PreparedFile((root or cache_dir() / "prepared") / f"{checkpoint.name}-{name}.safetensors", key)


def _sources(checkpoint: Path) -> list[Path]:
    return [*sorted(checkpoint.glob("*.safetensors")), checkpoint / "config.json"]


def read(file: PreparedFile) -> dict[str, torch.Tensor] | None:
    """The tensors of ``file``, mapped rather than copied; None where it is
    missing, stale (another key) or unreadable (logged)."""
    from safetensors import safe_open

    try:
        with safe_open(file.path, framework="pt", device="cpu") as f:
            if (f.metadata() or {}).get(META_KEY) != file.key:
                log.info("%s: made from another checkpoint or plan; preparing again", file.path.name)
                return None
            return {name: f.get_tensor(name) for name in f.keys()}
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - a damaged cache file must not fail the load
        log.warning("%s: unreadable prepared weights (%s); preparing again", file.path, e)
        return None


def write(file: PreparedFile, tensors: dict[str, torch.Tensor]) -> None:
    """Save ``tensors`` as ``file``, atomically; a failure (a full disk) is logged:
    it costs the next load its speed, not this load its model."""
    from safetensors.torch import save_file

    tmp = None
    try:
        file.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{file.path.name}.", suffix=".partial", dir=file.path.parent)
        os.close(fd)
        save_file(tensors, tmp, metadata={META_KEY: file.key})
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; weights are not a secret
        os.replace(tmp, file.path)
        tmp = None
    except Exception as e:  # noqa: BLE001 - see the docstring
        log.warning("could not save prepared weights %s: %s", file.path, e)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)

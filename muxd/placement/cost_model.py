"""The cost model: how long a model's prefill and decode jobs take, from measured profiles.

Placement and the simulator ask ``CostModel.prefill_s`` and
``CostModel.decode_s`` millions of times, at any share, batch and length;
each answer comes from a ``grid.LatencyGrid`` built once at load (filled,
monotone, defined beyond its edges; how is in ``grid.py``'s docstring), so
a query parses nothing: a dict lookup, three bisections, eight reads.

Two sources feed it:

- **muxd's profiles** (``profiles/<device-kind>/<model-signature>.json``,
  written by ``muxd profile``, read by ``load_profile``), whose schema is
  ``Profile`` below, version 1::

    {
      "schema_version": 1,
      "device_kind": "nvidia-a100-80gb",          # the directory name; a CPU's names its ISA
      "model_signature": "llama-32x4096-...",     # the file name: the model's shape, never its path
      "model_shape": {"layers": 32, ...},         # what the signature encodes, for people (free-form)
      "tensor_parallel": 1,                       # devices one instance spans
      "provenance": {"device": "NVIDIA A100-SXM4-80GB", "driver": "550.54.15", "torch": "2.5.1",
                     "muxd_version": "0.1.0", "date": "2025-01-31T12:00:00Z", "commit": "cda49ee"},
      "memory": {"weight_bytes": 13476839424,     # the model's weights on one device
                 "bytes_per_kv_page": 8192,       # one page of the pool (K and V planes)
                 "pages_per_token": 64.0},        # KV pages one token of context holds, all layers
      "prefill": {"shares": [0.5, 1.0],           # fractions of the device's compute, ascending
                  "batches": [1, 8],              # sequences per job, ascending
                  "lengths": [128, 512],          # prompt tokens of each sequence, ascending
                  "seconds": [[[0.02, 0.07], [0.12, null]],   # [share][batch][length] latency of one job;
                              [[0.01, 0.04], [0.07, 0.27]]]}, # null: not measured (e.g. out of memory)
      "decode": {...the same, lengths = context tokens of each sequence, seconds = one decode step},
      "colocated": [{"prefill_share": 0.5, "prefill_batch": 1, "prefill_length": 512,   # optional (default []):
                     "decode_share": 0.5, "decode_batch": 16, "decode_context": 256,    # a prefill and a decode
                     "prefill_s": 1.3, "decode_s": 0.09,                                # run at once on split
                     "prefill_alone_s": 1.1, "decode_alone_s": 0.07}],                  # compute, and each alone
      "engine_overhead": {"per_job_s": 0.0002, "per_sequence_s": 0.00005}  # optional (default 0): the engine
    }                                                                        # loop's time per job, beside the runner's

  Latencies are seconds of wall time of one job; a share is the fraction of
  SMs (GPU) or cores (CPU) the executor gave the job, as ``Job.share``.
  ``colocated`` (``ColocatedLatency``, added to version 1: files without it
  read as before) holds what the grids cannot: jobs on split compute still
  share the memory bandwidth, so a prefill beside a decode is slower than
  either grid says; each point gives both latencies beside each other and
  alone, measured back to back, so that their ratio is the slowdown.
- **the MuxServe reference cost file** (``CostModel.from_muxserve_file``),
  read by path and never copied: model -> GPUs -> SM % -> batch ->
  sequence length -> {"prefill", "decoding"} in ms, keys strings in no
  order, -1 for a cell not measured. Its SM percentages become shares, its
  milliseconds seconds, and its GPU count the tensor-parallel degree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from muxd.errors import ConfigError
from muxd.placement.grid import LatencyGrid

FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"  # device kinds and signatures name directories and files


class Provenance(BaseModel):
    """Who measured a profile, on what, when: every shipped figure traces back to a run."""

    model_config = ConfigDict(extra="allow", frozen=True)  # a profiler may add more (CPU ISA, green contexts)

    device: str
    driver: str | None = None
    torch: str | None = None
    muxd_version: str
    date: str  # ISO 8601
    commit: str | None = None


class MemoryFigures(BaseModel):
    """A model's memory on one device: weights, and KV cache in pages of the shared pool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight_bytes: int = Field(ge=0)
    bytes_per_kv_page: int = Field(gt=0)
    pages_per_token: float = Field(gt=0)

    @property
    def kv_bytes_per_token(self) -> float:
        """Bytes of KV cache one token of context holds."""
        return self.bytes_per_kv_page * self.pages_per_token


class LatencyTable(BaseModel):
    """Measured seconds of one job kind over (share, batch, length); ``None`` for a cell not measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shares: list[float]
    batches: list[int]
    lengths: list[int]
    seconds: list[list[list[float | None]]]  # [share][batch][length]

    @model_validator(mode="after")
    def _check(self) -> LatencyTable:
        self.grid()  # validates axes, shape and values once, at the edge
        return self

    def grid(self) -> LatencyGrid:
        """The table as a queryable, filled, monotone grid."""
        try:
            values = np.array([[[math.nan if x is None else x for x in row] for row in plane] for plane in self.seconds])
        except ValueError:  # ragged
            values = np.empty(0)
        if values.ndim != 3:
            raise ValueError("seconds must be a [share][batch][length] nest of lists of equal lengths")
        return LatencyGrid(self.shares, self.batches, self.lengths, values)


class ColocatedLatency(BaseModel):
    """A prefill job and a decode job of one model running at the same time on split compute.

    Both latencies are medians of jobs that ran wholly beside the other kind;
    the ``_alone_s`` figures are the same jobs at the same shares with the
    rest of the device idle, measured in the same run, so ``slowdown`` is
    what sharing the device's memory bandwidth and caches costs each.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefill_share: float = Field(gt=0, le=1)
    prefill_batch: int = Field(ge=1)
    prefill_length: int = Field(ge=1)
    decode_share: float = Field(gt=0, le=1)
    decode_batch: int = Field(ge=1)
    decode_context: int = Field(ge=1)
    prefill_s: float = Field(gt=0)
    decode_s: float = Field(gt=0)
    prefill_alone_s: float = Field(gt=0)
    decode_alone_s: float = Field(gt=0)

    @property
    def slowdown(self) -> tuple[float, float]:
        """(prefill, decode): latency beside the other kind over latency alone."""
        return self.prefill_s / self.prefill_alone_s, self.decode_s / self.decode_alone_s


class EngineOverhead(BaseModel):
    """The engine loop's own time per job, beside the runner's: ``per_job_s + per_sequence_s × batch``.

    A unit's step does more than run its job: the scheduler picks it, the
    executor hands it to a worker thread and back, and each sequence's new
    token is appended, detokenized and reported. A slot waits for that
    before its next job, so the simulator adds it to every job's latency
    (measured by ``muxd profile``: a decode loop's wall time less its jobs'
    own times, at two batch sizes).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    per_job_s: float = Field(ge=0)
    per_sequence_s: float = Field(ge=0)

    def seconds(self, batch: int) -> float:
        return self.per_job_s + self.per_sequence_s * batch


class Profile(BaseModel):
    """One model shape's measured costs on one device kind (``profiles/<device_kind>/<model_signature>.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    schema_version: Literal[1] = 1
    device_kind: str = Field(pattern=FILE_NAME)
    model_signature: str = Field(pattern=FILE_NAME)
    model_shape: dict[str, str | int | float | bool] = {}
    tensor_parallel: int = Field(default=1, ge=1)
    provenance: Provenance
    memory: MemoryFigures
    prefill: LatencyTable
    decode: LatencyTable
    colocated: list[ColocatedLatency] = []
    engine_overhead: EngineOverhead = EngineOverhead(per_job_s=0.0, per_sequence_s=0.0)


def profile_path(root: Path, device_kind: str, model_signature: str) -> Path:
    """Where a profile lives under ``root`` (the repository's ``profiles/`` or a user's)."""
    return Path(root) / device_kind / f"{model_signature}.json"


def load_profile(path: str | Path) -> Profile:
    """Read and validate one profile; a bad file is a ``ConfigError`` that names it."""
    path = Path(path)
    try:
        return Profile.model_validate_json(path.read_bytes())
    except OSError as e:
        raise ConfigError(f"cannot read profile {path}: {e.strerror or e}") from e
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'file'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"profile {path} is not a valid muxd profile ({problems}); re-run `muxd profile`") from e


def save_profile(profile: Profile, path: str | Path) -> Path:
    """Write ``profile`` as JSON at ``path`` (directories made), for ``muxd profile``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profile.model_dump_json(indent=1) + "\n")
    return path


class CostModel:
    """Seconds of prefill and decode jobs per (model, tensor-parallel degree), at any share, batch and length.

    Invariant: every answer is positive and finite for share > 0, exact at
    measured grid points, non-decreasing in batch and length and
    non-increasing in share (``grid.LatencyGrid``); a (model, tp) without a
    grid is a ``ConfigError`` naming the ones there are.
    """

    def __init__(self, prefill: Mapping[tuple[str, int], LatencyGrid], decode: Mapping[tuple[str, int], LatencyGrid]):
        if prefill.keys() != decode.keys():
            raise ValueError("every (model, tp) needs both a prefill and a decode grid")
        self._prefill = dict(prefill)
        self._decode = dict(decode)

    # -- queries (the hot path) ---------------------------------------------
    def prefill_s(self, model: str, tp: int, share: float, batch: float, tokens: float) -> float:
        """Seconds of one prefill job: ``batch`` prompts of ``tokens`` tokens each, ``share`` of the devices."""
        grid = self._prefill.get((model, tp))
        if grid is None:
            raise self._missing(model, tp)
        return grid(share, batch, tokens)

    def decode_s(self, model: str, tp: int, share: float, batch: float, context: float) -> float:
        """Seconds of one decode step: ``batch`` sequences of ``context`` tokens each, ``share`` of the devices."""
        grid = self._decode.get((model, tp))
        if grid is None:
            raise self._missing(model, tp)
        return grid(share, batch, context)

    # -- what it knows -------------------------------------------------------
    def models(self) -> list[str]:
        """The models it has costs for, sorted."""
        return sorted({model for model, _ in self._prefill})

    def tp_degrees(self, model: str) -> list[int]:
        """The tensor-parallel degrees ``model`` has costs for, ascending (empty if none)."""
        return sorted(tp for m, tp in self._prefill if m == model)

    def grids(self, model: str, tp: int) -> tuple[LatencyGrid, LatencyGrid]:
        """The (prefill, decode) grids of ``model`` at ``tp``, to inspect filled cells."""
        if (model, tp) not in self._prefill:
            raise self._missing(model, tp)
        return self._prefill[(model, tp)], self._decode[(model, tp)]

    def _missing(self, model: str, tp: int) -> ConfigError:
        known = "; ".join(f"{m} (tp {', '.join(map(str, self.tp_degrees(m)))})" for m in self.models()) or "none"
        return ConfigError(f"no cost profile for model {model!r} at tensor-parallel degree {tp}; "
                           f"profiled: {known}. Run `muxd profile` for it or pass its profile.")

    # -- construction --------------------------------------------------------
    @classmethod
    def from_profile(cls, profile: Profile | str | Path, name: str | None = None) -> CostModel:
        """The costs of one profile (a ``Profile`` or its path), under ``name`` (default: its signature)."""
        if not isinstance(profile, Profile):
            profile = load_profile(profile)
        key = (name or profile.model_signature, profile.tensor_parallel)
        return cls({key: profile.prefill.grid()}, {key: profile.decode.grid()})

    @classmethod
    def union(cls, parts: Iterable[CostModel]) -> CostModel:
        """One cost model holding every part's grids; a (model, tp) in two parts is an error."""
        prefill: dict[tuple[str, int], LatencyGrid] = {}
        decode: dict[tuple[str, int], LatencyGrid] = {}
        for part in parts:
            for key in part._prefill:
                if key in prefill:
                    raise ValueError(f"two cost sources for model {key[0]!r} at tp {key[1]}")
                prefill[key], decode[key] = part._prefill[key], part._decode[key]
        return cls(prefill, decode)

    @classmethod
    def from_muxserve_file(cls, path: str | Path) -> CostModel:
        """The MuxServe reference cost file (read by path, see the module's docstring)."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the MuxServe cost file {path}: {e}") from e
        prefill: dict[tuple[str, int], LatencyGrid] = {}
        decode: dict[tuple[str, int], LatencyGrid] = {}
        for model, by_gpus in doc.items():
            for gpus, by_sm in by_gpus.items():
                key = (model, int(gpus))
                try:
                    prefill[key] = _muxserve_grid(by_sm, "prefill")
                    decode[key] = _muxserve_grid(by_sm, "decoding")
                except (ValueError, TypeError, AttributeError) as e:
                    raise ConfigError(f"the MuxServe cost file {path}: bad grid for {model} on {gpus} GPUs: {e}") from e
        return cls(prefill, decode)


def _muxserve_grid(by_sm: dict[str, dict[str, dict[str, dict[str, float]]]], kind: str) -> LatencyGrid:
    """One (model, GPUs) of the MuxServe file as a grid: keys sorted as numbers, -1 and absent cells missing."""
    sms = sorted(by_sm, key=float)
    batches = sorted({b for by_batch in by_sm.values() for b in by_batch}, key=float)
    lengths = sorted({n for by_batch in by_sm.values() for by_len in by_batch.values() for n in by_len}, key=float)
    ms = np.full((len(sms), len(batches), len(lengths)), math.nan)
    for i, sm in enumerate(sms):
        for j, b in enumerate(batches):
            for k, n in enumerate(lengths):
                value = by_sm[sm].get(b, {}).get(n, {}).get(kind, -1)
                if value > 0:
                    ms[i, j, k] = value
    return LatencyGrid([float(s) / 100 for s in sms], [float(b) for b in batches], [float(n) for n in lengths],
                       ms / 1000)

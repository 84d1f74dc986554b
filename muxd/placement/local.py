"""Placement on this machine: the configured models on its devices, costed by muxd's profiles.

``placement = "auto"`` (``muxd serve``) and ``muxd plan`` without
``--devices`` plan here. The configured models are planned; the model
library's, loaded on demand (``preload = false``), join the first unit. The cluster is the local machine: the CPU as one
device (its memory: the RAM free now), or the GPUs NVML lists, each a mesh
of one (a unit spans one device; muxd has no tensor parallelism). Each
model's costs are the profile whose ``model_shape`` is the model's (read
from its ``config.json``, never its name) at the precision it will load in,
for this device kind (``cpu-<kernels' ISA>-<cores>c`` or the GPU's name);
where this kind has none, the same shape's profile of another kind of the
same device type is used and the plan says so (``notes``), and a model with
no profile at all is an error that names ``muxd profile``.

On a CPU the planner offers time slices of the smallest share
(``Estimator``'s ``time_slices``): two cores cannot give three models a core
each, but the executor lets them take turns.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import muxd
from muxd.config import DaemonConfig, ModelConfig, UnitConfig, unit_name_for
from muxd.errors import ConfigError
from muxd.placement.cluster import GiB, Cluster, Device
from muxd.placement.cost_model import CostModel, Profile, load_profile
from muxd.placement.estimate import Estimator, Lengths
from muxd.placement.model_spec import ModelSpec
from muxd.placement.plan import Plan
from muxd.placement.planner import Planner

CPU_RUNTIME_BYTES = 256 << 20  # a unit process's torch and buffers beside the weights (measured ~200 MB)
CPU_TIME_SLICES = 4
# The keys of a profile's model_shape that a config.json gives, and where.
_SHAPE_KEYS = {"model_type": "model_type", "layers": "num_hidden_layers", "hidden_size": "hidden_size",
               "intermediate_size": "intermediate_size", "heads": "num_attention_heads",
               "vocab_size": "vocab_size"}  # fmt: skip


@dataclass(frozen=True)
class LocalMachine:
    """What the plan is for: the device kind profiles are filed under, its memory, its count of devices."""

    device_type: str  # "cpu" or "cuda"
    kind: str  # "cpu-avx512-vnni-2c", "nvidia-h100-80gb-hbm3"
    memory_bytes: int  # per device
    count: int = 1

    def cluster(self) -> Cluster:
        return Cluster(Device(self.kind, self.memory_bytes), nodes=1, per_node=self.count)

    @classmethod
    def cpu(cls, isa: str, cores: int, memory_bytes: int | None = None) -> LocalMachine:
        if memory_bytes is None:
            import psutil

            memory_bytes = int(psutil.virtual_memory().available)
        return cls("cpu", f"cpu-{isa}-{cores}c", memory_bytes)


def profile_roots(extra: Sequence[Path] = ()) -> list[Path]:
    """Where profiles are looked for, first match wins: ``extra``, ./profiles, then those shipped with muxd."""
    shipped = Path(muxd.__file__).resolve().parents[1] / "profiles"
    roots: list[Path] = []
    for root in (*extra, Path("profiles"), shipped):
        if root.is_dir() and root.resolve() not in [r.resolve() for r in roots]:
            roots.append(root)
    return roots


def precisions(model: ModelConfig, device_type: str) -> list[tuple[str, str]]:
    """(weights, activations) the model may load in, most likely first (``engine/kernel_plan.py``'s rules)."""
    dtypes = [model.dtype] + (["float32"] if device_type == "cpu" and model.dtype == "bfloat16" else [])
    if model.quantization == "auto" and device_type != "cpu":
        return [(model.dtype, model.dtype)]  # a GPU takes full precision for auto
    if model.quantization == "auto":
        return [("q8", d) for d in dtypes] + [(d, d) for d in dtypes]
    if model.quantization == "none":
        return [(d, d) for d in dtypes]
    return [(model.quantization, d) for d in dtypes]


def read_config(model: ModelConfig) -> dict[str, Any]:
    path = Path(model.path) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"model {model.name!r}: cannot read {path}: {e}") from None


def matches(profile: Profile, config: dict[str, Any], weights: str, activations: str) -> bool:
    """Whether ``profile`` measured a model of ``config``'s shape at this precision."""
    shape = profile.model_shape if isinstance(profile.model_shape, dict) else {}
    heads = int(config.get("num_attention_heads") or 0)
    want = {k: config.get(v) for k, v in _SHAPE_KEYS.items()}
    want["kv_heads"] = config.get("num_key_value_heads") or heads
    want["head_dim"] = config.get("head_dim") or (int(config.get("hidden_size") or 0) // heads if heads else None)
    want.update(weights=weights, activations=activations)
    return all(shape.get(k) == v for k, v in want.items())


def find_profile(model: ModelConfig, config: dict[str, Any], machine: LocalMachine,
                 roots: Sequence[Path]) -> tuple[Profile, str | None]:
    """The model's profile for this machine, or the nearest kind's with a note saying so."""
    kinds = _kinds(machine, roots)
    for weights, activations in precisions(model, machine.device_type):
        for kind, directory in kinds:
            for path in sorted(directory.glob("*.json")):
                profile = load_profile(path)
                if matches(profile, config, weights, activations):
                    note = None if kind == machine.kind else (
                        f"{model.name}: costs measured on {kind}, none on this {machine.kind} "
                        f"(`muxd profile -m {model.name}=PATH` measures them here)")
                    return profile, note
    raise ConfigError(
        f"model {model.name!r}: no profile of its shape ({config.get('model_type')}, "
        f"{config.get('num_hidden_layers')} layers, hidden {config.get('hidden_size')}) for {machine.kind} "
        f"in {', '.join(map(str, roots)) or 'no profiles directory'}; run `muxd profile -m {model.name}={model.path}` "
        "to measure it, or list [[units]] yourself")


def _kinds(machine: LocalMachine, roots: Sequence[Path]) -> list[tuple[str, Path]]:
    """Profile directories of this device type: this kind first, then same core count, then the rest."""
    found = [(d.name, d) for root in roots for d in sorted(root.iterdir())
             if d.is_dir() and d.name.startswith(machine.device_type if machine.device_type == "cpu" else "nvidia")]
    suffix = machine.kind.rsplit("-", 1)[-1]
    return sorted(found, key=lambda kd: (kd[0] != machine.kind, not kd[0].endswith(suffix)))


def model_specs(models: Sequence[ModelConfig], machine: LocalMachine,
                roots: Sequence[Path]) -> tuple[list[ModelSpec], CostModel, list[str]]:
    """Each model's placement spec (sizes from its config, weights as profiled) and the union of their costs."""
    specs, costs, notes = [], [], []
    for m in models:
        config = read_config(m)
        profile, note = find_profile(m, config, machine, roots)
        activations = str(profile.model_shape.get("activations", m.dtype))
        spec = ModelSpec.from_hf_config(m.name, config, rate=m.rate, dtype=activations, slo_goal=m.slo_goal,
                                        measured_weight_bytes=profile.memory.weight_bytes)
        specs.append(spec)
        costs.append(CostModel.from_profile(profile, m.name))
        notes += [note] if note else []
    return specs, CostModel.union(costs), notes


def plan_local(models: Sequence[ModelConfig], machine: LocalMachine, unit: UnitConfig,
               roots: Sequence[Path] = (), objective: str = "goodput") -> tuple[Plan, list[str]]:
    """The plan of ``models`` on ``machine`` (``unit``: the pool and batch settings every unit gets).

    A CPU's memory for the plan is the models' weights and reserves plus the
    configured pool (``kv_cache_mb``), or the RAM free now if that is less:
    the free RAM itself would plan a pool of many GiB nobody asked for.
    """
    specs, costs, notes = model_specs(models, machine, profile_roots(roots))
    cpu = machine.device_type == "cpu"
    options = dict(page_tokens=unit.page_tokens, max_batch=unit.max_batch_seqs,
                   max_prefill_tokens=unit.max_prefill_tokens, runtime_bytes=CPU_RUNTIME_BYTES if cpu else 2 * GiB,
                   time_slices=CPU_TIME_SLICES if cpu else 1)  # fmt: skip
    if cpu:
        reserve = Estimator(costs, machine.cluster().device, **options).reserve_bytes
        need = sum(s.weight_bytes + reserve(s, 1) for s in specs) + unit.kv_cache_bytes
        if need > machine.memory_bytes:
            notes.append(f"{machine.memory_bytes / GiB:.1f} GiB of RAM free, {need / GiB:.1f} GiB wanted: "
                         "the pool gets what the weights leave")
        machine = replace(machine, memory_bytes=min(need, machine.memory_bytes))
    planner = Planner(costs, machine.cluster(), Lengths.sharegpt(), mesh_sizes=(1,), objective=objective, **options)
    return planner.plan(specs), notes


def units_from_plan(plan: Plan, config: DaemonConfig, machine: LocalMachine) -> tuple[UnitConfig, ...]:
    """The daemon's units as the plan places them; a model the plan could not place is an error.

    Each unit keeps the configured unit settings; its pool is the plan's KV bytes.
    """
    if plan.unplaced:
        raise ConfigError(f"placement = \"auto\": {', '.join(plan.unplaced)} fit no {machine.kind} of "
                          f"{machine.memory_bytes / GiB:.1f} GiB beside the others; " + "; ".join(plan.decisions[-1:]))
    template = config.units[0]
    by_name = {m.name: m for u in config.units for m in u.models}
    on_demand = [m for m in by_name.values() if not m.preload]
    units = []
    for i, planned in enumerate(plan.units):
        device = "cpu" if machine.device_type == "cpu" else f"cuda:{planned.devices[0]}"
        models = [replace(by_name[m.name], device=device) for m in planned.models]
        models += [replace(m, device=device) for m in on_demand] if i == 0 else []  # the library's: the first unit
        units.append(replace(template, name=unit_name_for(device), models=tuple(models), device=device,
                             kv_cache_bytes=max(planned.kv_bytes, 1)))
    return tuple(units)


def local_machine(config: DaemonConfig, isa: str | None = None, nvml: Any = None) -> LocalMachine:
    """The machine the configured units run on: their CPU (``isa``: the kernels' build) or the GPUs NVML lists
    (``nvml``: a ``muxd.nvml.Nvml``, made here by default)."""
    unit = config.units[0]
    kinds = {u.device.partition(":")[0] for u in config.units}
    if len(kinds) > 1:
        raise ConfigError(f'placement = "auto" plans one kind of device; the models ask for {" and ".join(sorted(kinds))}: '
                          "give them one device (or none), or list [[units]]")
    if unit.device == "cpu":
        cores = unit.threads or len(os.sched_getaffinity(0))
        return LocalMachine.cpu(isa or "torch", cores)
    from muxd.nvml import Nvml

    gpus = [g.stats for g in (nvml or Nvml()).snapshot()]
    if not gpus or gpus[0].memory_total_bytes is None:
        raise ConfigError('placement = "auto" on a GPU needs NVML to read the GPUs (nvidia-ml-py); list [[units]]')
    kind = "-".join("".join(c if c.isalnum() else " " for c in (gpus[0].name or "gpu").lower()).split())
    return LocalMachine("cuda", kind, gpus[0].memory_total_bytes, count=len(gpus))


def planned_models(config: DaemonConfig) -> list[ModelConfig]:
    """The models a plan places: the configured ones, not the library's loaded on demand."""
    preloaded = [m for m in config.models if m.preload]
    if not preloaded:
        raise ConfigError("a plan places the configured models; the library's alone load on demand into one unit: "
                          "list [[models]] to plan them")
    return preloaded


def auto_place(config: DaemonConfig, isa: str | None = None, roots: Sequence[Path] = (),
               nvml: Any = None) -> tuple[DaemonConfig, Plan, list[str]]:
    """``config`` with its units replaced by a plan's (``placement = "auto"``), the plan and its notes."""
    machine = local_machine(config, isa, nvml)
    plan, notes = plan_local(planned_models(config), machine, config.units[0], roots)
    return replace(config, units=units_from_plan(plan, config, machine)), plan, notes

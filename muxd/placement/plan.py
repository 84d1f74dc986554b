"""The placement result: which units, which models on each, with what shares, quotas and expectations.

A ``Plan`` is plain data (frozen pydantic models, ``model_dump_json`` for
``muxd plan --json``): the planner writes it, ``muxd plan`` prints it, and
``placement = "auto"`` and the simulator will read it. Every figure is an
estimate of the cost model at the planned load; ``reason`` says, in one line
per model, why it went where it did.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ModelPlacement(_Frozen):
    """One model on its unit.

    Its instance spans all the unit's devices (tensor-parallel degree =
    the unit's device count); ``decode_share`` is the fraction of the
    devices' compute its decode jobs get, ``prefill_share`` its prefill
    jobs'; ``kv_quota_pages`` is its soft quota of the unit's page pool.
    """

    name: str
    cost_name: str
    tp: int = Field(ge=1)
    rate: float  # requests/s it is planned for
    prefill_share: float = Field(gt=0, le=1)
    decode_share: float = Field(gt=0, le=1)
    kv_quota_pages: int = Field(ge=0)
    kv_quota_bytes: int = Field(ge=0)
    batch: int = Field(ge=0)  # decode batch that carries its load
    expected_rps: float  # requests/s it is expected to finish
    expected_tokens_s: float  # output tokens/s
    slo_attainment: float = Field(ge=0, le=1)  # expected fraction of its requests within SLO
    mean_latency_s: float
    meets_rate: bool
    meets_slo: bool
    reason: str


class Unit(_Frozen):
    """One LLM unit: a mesh of devices of one node (or a CPU) and the models it serves.

    Invariant (per device): ``(weight_bytes + reserve_bytes) / len(devices)
    + kv_bytes / len(devices) <= device_memory_bytes``, and the models'
    decode shares add up to at most 1.
    """

    name: str
    node: int
    devices: tuple[int, ...] | str  # GPU ids within the node, or "cpu"
    device_kind: str
    device_memory_bytes: int
    weight_bytes: int  # all models' weights, over all its devices
    reserve_bytes: int  # activations and runtime, over all its devices
    kv_bytes: int  # the page pool, over all its devices
    page_tokens: int
    page_bytes: int  # one page: K and V of page_tokens tokens of one KV head of one layer
    models: tuple[ModelPlacement, ...]

    @property
    def size(self) -> int:
        return 1 if isinstance(self.devices, str) else len(self.devices)


class Plan(_Frozen):
    """A placement of models on a cluster, with what it is expected to achieve.

    ``unplaced`` names models no unit could hold (memory); ``decisions``
    are the planner's reasons in the order it took them.
    """

    cluster: str
    groupings_tried: int
    units: tuple[Unit, ...]
    unplaced: tuple[str, ...] = ()
    expected_rps: float  # all models
    expected_tokens_s: float
    goodput_rps: float  # requests/s expected within their SLO
    decisions: tuple[str, ...] = ()

    def model(self, name: str) -> ModelPlacement:
        for unit in self.units:
            for m in unit.models:
                if m.name == name:
                    return m
        raise KeyError(f"model {name!r} is not in the plan")

    def unit_of(self, name: str) -> Unit:
        for unit in self.units:
            if any(m.name == name for m in unit.models):
                return unit
        raise KeyError(f"model {name!r} is not in the plan")

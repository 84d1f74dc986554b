"""Typed configuration of models, units and the daemon, resolved once at the edge.

``resolve`` merges the TOML file, the environment and the command line's
flags (file < env < flags) into a ``DaemonConfig``; inside muxd the result
is trusted. ``ModelConfig`` and ``UnitConfig`` are plain picklable
dataclasses: a ``UnitConfig`` is what a unit process is started with.

The TOML file (``$XDG_CONFIG_HOME/muxd/muxd.toml``)::

    socket = "/run/user/1000/muxd/muxd.sock"   # default: $XDG_RUNTIME_DIR/muxd/muxd.sock
    tcp = "127.0.0.1:8000"                     # optional extra listener, off by default
    allow_uids = [1001]                        # peers besides the daemon's own uid and root
    log_level = "info"
    stats_interval_ms = 500                    # the stats tick (/stats, /metrics, the stats stream)
    warm_spare = true                          # a standby unit process per unit, for fast restarts
    policy = "adbs"                            # unit defaults: policy, device, kv_cache_mb,
    kv_cache_mb = 256                          # page_tokens, max_batch_seqs, max_prefill_tokens, threads,
    prefix_caching = true                      # prefix_caching (reuse the KV of shared prompt prefixes),
    compute_shares = "auto"                    # compute_shares (a GPU: "streams" turns disjoint SMs off)

    [limits]
    queue_per_model = 256                      # admitted, unfinished requests per model; then 429
    drain_timeout_s = 30                       # SIGTERM: how long in-flight requests may finish

    [[models]]
    name = "smollm2"
    path = "~/.cache/muxd/models/smollm2-135m-instruct"
    dtype = "float32"
    device = "cpu"
    rate = 2.0                                 # expected requests/s
    slo_ttft_ms = 1000
    slo_tpot_ms = 200

    [[units]]                                  # optional: without it, one unit per device
    name = "cpu0"
    models = ["smollm2"]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from muxd import paths
from muxd.errors import ConfigError
from muxd.library import LibraryEntry, default_models_dir, is_gguf, scan
from muxd.quantities import parse_bytes, parse_duration

DTYPE_NAMES = ("float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "auto", "q8", "int8", "nf4", "fp4")
POLICIES = ("adbs", "spatial", "temporal")
COMPUTE_SHARES = ("auto", "streams")  # a GPU unit's shares: disjoint green contexts where possible, or plain streams
LOG_LEVELS = ("debug", "info", "warning", "error")
DEVICE_AUTO = "auto"
# The demo's precision. On a CPU: fp32 activations, which keep SmolLM2's fp32
# answers where bf16 activations flip a near-tie ("capital of France"), and
# the faster weights of q8 (muxd's int8 kernels) and fp32 as measured at
# load on this CPU (engine/kernel_plan.py: "auto"). On a GPU: bf16.
DEMO_CPU = {"dtype": "float32", "quantization": "auto"}
DEMO_GPU = {"dtype": "bfloat16"}


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: str
    dtype: str = "float32"
    quantization: str = "none"
    rate: float = 1.0  # expected requests per second: placement and initial KV quotas
    device: str = DEVICE_AUTO  # the device of its unit when units are grouped by device
    slo_ttft_ms: float | None = None  # targets of its SLO attainment (core/slo.py)
    slo_tpot_ms: float | None = None
    slo_e2e_ms: float | None = None
    slo_goal: float = 0.99  # the attainment it should reach; `muxd top` colours against it
    preload: bool = True  # loaded when its unit starts; false: on its first request (library models)
    keep_alive: float = -1.0  # seconds it stays loaded after its last request; -1 never unloads, 0 at once
    pinned: bool = False  # never unloaded, by keep-alive nor to make room
    priority: int = 0  # made room for last: lower priorities are evicted first

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a model needs a name")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"model {self.name!r}: dtype {self.dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"model {self.name!r}: quantization {self.quantization!r} is not one of {', '.join(QUANTIZATIONS)}"
            )
        if self.rate < 0:
            raise ValueError(f"model {self.name!r}: rate must be >= 0, got {self.rate}")
        if not 0 < self.slo_goal <= 1:
            raise ValueError(f"model {self.name!r}: slo_goal must be in (0, 1], got {self.slo_goal}")
        for slo in ("slo_ttft_ms", "slo_tpot_ms", "slo_e2e_ms"):
            value = getattr(self, slo)
            if value is not None and value <= 0:
                raise ValueError(f"model {self.name!r}: {slo} must be > 0, got {value}")
        if self.keep_alive < 0 and self.keep_alive != -1:
            raise ValueError(f"model {self.name!r}: keep_alive must be seconds >= 0 or -1 (never), got {self.keep_alive}")
        for flag in ("preload", "pinned"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"model {self.name!r}: {flag} must be true or false, got {getattr(self, flag)!r}")


@dataclass(frozen=True)
class UnitConfig:
    """One LLM unit: its models, device, KV pool and scheduling policy."""

    name: str
    models: tuple[ModelConfig, ...]
    device: str = "cpu"
    kv_cache_bytes: int = 256 << 20
    page_tokens: int = 16
    policy: str = "adbs"
    max_batch_seqs: int = 64
    max_prefill_tokens: int = 512
    threads: int | None = None  # intra-op threads of the unit process (None: torch's default)
    prefix_caching: bool = True  # reuse computed KV blocks of shared prompt prefixes (core/kv_manager.py)
    # A GPU unit's compute shares: "auto", green contexts of disjoint SMs where the driver makes
    # them (engine/green_context.py); "streams", plain streams over every SM.
    compute_shares: str = "auto"
    seed: int = 0
    # What its weights and KV pool may take: bytes (int), or a fraction (float <= 1) of the
    # device's memory, resolved by the daemon at start; None: a safe share of what is free then.
    memory_budget: int | float | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError(f"unit {self.name!r} has no models")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"unit {self.name!r}: model names repeat: {names}")
        if self.policy not in POLICIES:
            raise ValueError(f"unit {self.name!r}: policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.page_tokens < 1 or self.kv_cache_bytes < 1:
            raise ValueError(f"unit {self.name!r}: page_tokens and kv_cache_bytes must be positive")
        if self.memory_budget is not None:
            object.__setattr__(self, "memory_budget", parse_bytes(self.memory_budget, f"unit {self.name!r}: memory_budget"))
        if self.compute_shares not in COMPUTE_SHARES:
            raise ValueError(f"unit {self.name!r}: compute_shares {self.compute_shares!r} is not one of "
                             f"{', '.join(COMPUTE_SHARES)}")  # fmt: skip
        if not isinstance(self.prefix_caching, bool):
            raise ValueError(f"unit {self.name!r}: prefix_caching must be true or false, got {self.prefix_caching!r}")


@dataclass(frozen=True)
class Limits:
    queue_per_model: int = 256  # requests of one model admitted and not finished; beyond: 429
    drain_timeout_s: float = 30.0  # on SIGTERM, how long in-flight requests may run on
    load_wait_s: float = 60.0  # how long a request waits for memory to load its model; then 503

    def __post_init__(self) -> None:
        if self.queue_per_model < 1:
            raise ValueError(f"limits.queue_per_model must be >= 1, got {self.queue_per_model}")
        if self.drain_timeout_s < 0:
            raise ValueError(f"limits.drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
        if self.load_wait_s < 0:
            raise ValueError(f"limits.load_wait_s must be >= 0, got {self.load_wait_s}")


@dataclass(frozen=True)
class DaemonConfig:
    """Everything ``muxd serve`` runs with."""

    units: tuple[UnitConfig, ...]
    socket: Path
    tcp: tuple[str, int] | None = None
    allow_uids: tuple[int, ...] = ()
    limits: Limits = field(default_factory=Limits)
    log_level: str = "info"
    # "manual" ([[units]]), "per-device" (grouped by device), "demo", or "auto": units grouped by
    # device until `muxd serve` replaces them with a plan's (placement/local.py)
    placement: str = "manual"
    warm_spare: bool = True  # keep a standby process per unit (torch imported) to replace a dead unit fast
    stats_interval_ms: int = 500  # the stats tick: /stats, /metrics and the stats stream read its figures
    models_dir: Path | None = None  # the model library (library.py); its models load on demand

    def __post_init__(self) -> None:
        if not 50 <= self.stats_interval_ms <= 60_000:
            raise ValueError(f"stats_interval_ms must be in [50, 60000], got {self.stats_interval_ms}")
        names = [m.name for u in self.units for m in u.models]
        if len(set(names)) != len(names):
            raise ValueError(f"a model is in two units: {sorted(n for n in set(names) if names.count(n) > 1)}")

    @property
    def models(self) -> tuple[ModelConfig, ...]:
        return tuple(m for u in self.units for m in u.models)


@dataclass(frozen=True)
class Flags:
    """What ``muxd serve``'s command line may set (None: not given)."""

    config: Path | None = None
    models: tuple[str, ...] = ()  # NAME=PATH
    socket: Path | None = None
    tcp: str | None = None
    log_level: str | None = None
    queue_per_model: int | None = None
    drain_timeout_s: float | None = None
    device: str | None = None
    kv_cache_mb: int | None = None
    policy: str | None = None
    threads: int | None = None
    models_dir: Path | None = None
    placement: str | None = None  # "auto": units from a plan (muxd/placement/local.py)


# Keys of the TOML file: top level, unit defaults (also allowed in [[units]]), models, limits.
_TOP_KEYS = {
    "socket", "tcp", "allow_uids", "log_level", "placement", "warm_spare", "stats_interval_ms", "limits", "models",
    "units", "models_dir", "keep_alive",
}  # fmt: skip
_UNIT_KEYS = {
    "policy", "device", "kv_cache_mb", "page_tokens", "max_batch_seqs", "max_prefill_tokens", "threads", "prefix_caching",
    "memory_budget", "compute_shares",
}
_MODEL_KEYS = {f.name for f in fields(ModelConfig)}
_LIMIT_KEYS = {f.name for f in fields(Limits)}
# Environment variables: name -> (settings key, parser).
_ENV = {
    "MUXD_SOCKET": ("socket", str),
    "MUXD_TCP": ("tcp", str),
    "MUXD_LOG_LEVEL": ("log_level", str),
    "MUXD_QUEUE_PER_MODEL": ("queue_per_model", int),
    "MUXD_DRAIN_TIMEOUT_S": ("drain_timeout_s", float),
    "MUXD_DEVICE": ("device", str),
    "MUXD_MODELS_DIR": ("models_dir", str),
    "MUXD_STATS_INTERVAL_MS": ("stats_interval_ms", int),
    "MUXD_WARM_SPARE": ("warm_spare", lambda v: v.lower() not in ("0", "false", "no", "off")),
}


def resolve(
    flags: Flags | None = None,
    env: Mapping[str, str] | None = None,
    *,
    demo: Callable[[], dict[str, str]] | None = None,
) -> DaemonConfig:
    """Merge file < env < flags into a ``DaemonConfig``; raise ``ConfigError`` saying what to fix.

    With no models in the file nor the flags, ``demo()`` supplies them
    (name -> path) and they share one unit: the embedded demo default.
    """
    flags = flags or Flags()
    env = os.environ if env is None else env
    file_path = flags.config or paths.config_path(env)
    settings = _read_file(file_path, required=flags.config is not None)
    base_dir = file_path.parent
    for var, (key, parse) in _ENV.items():
        if env.get(var):
            settings[key] = _parse_env(var, env[var], parse)
    for f in fields(Flags):
        value = getattr(flags, f.name)
        if f.name not in ("config", "models") and value is not None:
            settings[f.name] = str(value) if f.name == "models_dir" else value
    if flags.models:
        settings["models"] = [parse_model_flag(spec) for spec in flags.models]
        settings.pop("units", None)  # units named in a file refer to the file's models
        base_dir = Path.cwd()
    try:
        return _build(settings, base_dir, env, demo)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid configuration ({file_path if file_path.is_file() else 'flags'}): {e}") from e


def parse_model_flag(spec: str) -> dict[str, str]:
    """``"smol=/models/smol" -> {"name": "smol", "path": "/models/smol"}``.

    Options of the model may follow the path, comma-separated, as in the
    config file: ``smol8=/models/smol,quantization=int8,dtype=bfloat16,rate=2``.
    """
    name, sep, rest = spec.partition("=")
    path, *options = rest.split(",")
    if not sep or not name.strip() or not path.strip():
        raise ConfigError(f"--model {spec!r} is not NAME=PATH (e.g. --model smol=/models/SmolLM2-135M)")
    table = {"name": name.strip(), "path": path.strip()}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or key.strip() not in _FLAG_MODEL_KEYS:
            raise ConfigError(
                f"--model {spec!r}: {option!r} is not KEY=VALUE with KEY one of {', '.join(sorted(_FLAG_MODEL_KEYS))}"
            )
        table[key.strip()] = value.strip()
    if "rate" in table:
        try:
            table["rate"] = float(table["rate"])
        except ValueError:
            raise ConfigError(f"--model {spec!r}: rate {table['rate']!r} is not a number of requests/s") from None
    return table


_FLAG_MODEL_KEYS = {"dtype", "quantization", "device", "rate"}


def detect_device() -> str:
    """``cuda:0`` where an NVIDIA driver shows a GPU, else ``cpu`` (no torch import: the front end runs this)."""
    return "cuda:0" if Path("/dev/nvidia0").exists() and Path("/dev/nvidiactl").exists() else "cpu"


def unit_name_for(device: str) -> str:
    """``cpu -> cpu0``, ``cuda:1 -> cuda1``."""
    kind, _, index = device.partition(":")
    return f"{kind}{index or 0}"


# -- internals -----------------------------------------------------------------
def _read_file(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist; create it or leave out --config") from None
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    unknown = set(data) - _TOP_KEYS - _UNIT_KEYS
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(sorted(unknown))}")
    settings = {k: v for k, v in data.items() if k != "limits"}
    limits = data.get("limits", {})
    if set(limits) - _LIMIT_KEYS:
        raise ConfigError(f"config file {path}: unknown key(s) in [limits]: {', '.join(sorted(set(limits) - _LIMIT_KEYS))}")
    settings.update(limits)
    return settings


def _parse_env(var: str, value: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(value)
    except ValueError:
        raise ConfigError(f"${var}={value!r} is not a valid {parse.__name__}") from None


def _build(
    s: dict[str, Any], base_dir: Path, env: Mapping[str, str], demo: Callable[[], dict[str, str]] | None
) -> DaemonConfig:
    limits = Limits(**{k: s[k] for k in _LIMIT_KEYS if k in s})  # before the demo: fail fast
    wanted = s.get("placement", "manual")
    if wanted not in ("manual", "auto"):
        raise ValueError(f"placement = {wanted!r} is not one of manual, auto")
    if wanted == "auto" and s.get("units"):
        raise ValueError('placement = "auto" makes the units from a plan: leave out [[units]], or the placement')
    placement = "manual" if s.get("units") else "per-device"
    model_tables = s.get("models") or []
    if not model_tables and not _library(s, env):
        if demo is None:
            raise ConfigError("no models configured: add [[models]] to the config file or pass --model NAME=PATH")
        device = s.get("device") or DEVICE_AUTO
        precision = DEMO_CPU if (detect_device() if device == DEVICE_AUTO else device) == "cpu" else DEMO_GPU
        model_tables = [{"name": n, "path": p, **precision} for n, p in demo().items()]
        placement = "demo"
    placement = "auto" if wanted == "auto" else placement
    default_device = s.get("device") or DEVICE_AUTO
    library, keep = _library(s, env), parse_duration(s.get("keep_alive", 300), "keep_alive")
    models = [_model(t, base_dir, default_device, library, keep) for t in model_tables]
    extra = _library_models(library, {m.name for m in models}, default_device, keep)
    unit_defaults = {k: s[k] for k in _UNIT_KEYS if k in s and k != "device"}
    if placement == "manual":
        units = _with_library(_units(s["units"], models, unit_defaults, default_device), extra)
    else:
        units = _group(models + extra, unit_defaults)
    socket = Path(str(s["socket"])).expanduser() if s.get("socket") else paths.socket_path(env)
    if not socket.is_absolute():
        socket = base_dir / socket
    level = str(s.get("log_level", "info")).lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"log_level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    uids = tuple(int(u) for u in s.get("allow_uids", ()))
    spare = s.get("warm_spare", True)
    if not isinstance(spare, bool):
        raise ValueError(f"warm_spare must be true or false, got {spare!r}")
    interval = s.get("stats_interval_ms", 500)
    if not isinstance(interval, int) or isinstance(interval, bool):
        raise ValueError(f"stats_interval_ms must be an integer of milliseconds, got {interval!r}")
    return DaemonConfig(tuple(units), socket, _tcp(s.get("tcp")), uids, limits, level, placement, spare,
                        stats_interval_ms=interval, models_dir=_models_dir(s, env))  # fmt: skip


def _model(
    table: dict[str, Any], base_dir: Path, default_device: str, library: list[LibraryEntry], keep_alive: float
) -> ModelConfig:
    """A ``[[models]]`` entry or ``--model``; one without a path names a library model and sets its options."""
    unknown = set(table) - _MODEL_KEYS
    if unknown:
        raise ValueError(f"model {table.get('name', '?')!r}: unknown key(s) {', '.join(sorted(unknown))}")
    in_library = {e.name: e for e in library}
    if "name" in table and "path" not in table and table["name"] in in_library:
        table = {"preload": False, **table, "path": str(in_library[table["name"]].path)}
    if "name" not in table or "path" not in table:
        raise ValueError(f"every model needs a name and a path (or the name of a library model), got {table}")
    path = Path(str(table["path"])).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not (path / "config.json").is_file() and not is_gguf(path):
        raise ValueError(
            f"model {table['name']!r}: {path} is neither a Hugging Face model directory (no config.json) "
            "nor a GGUF file; give the local directory that holds config.json, the weights and tokenizer.json, "
            "or a .gguf file"
        )
    device = str(table.get("device", default_device))
    keep = table.get("keep_alive", -1 if table.get("preload", True) else keep_alive)
    table = {**table, "keep_alive": parse_duration(keep, f"model {table['name']!r}: keep_alive")}
    return ModelConfig(**{**table, "path": str(path), "device": device})


def _models_dir(s: dict[str, Any], env: Mapping[str, str]) -> Path:
    value = s.get("models_dir")
    return Path(str(value)).expanduser() if value else default_models_dir(dict(env))


def _library(s: dict[str, Any], env: Mapping[str, str]) -> list[LibraryEntry]:
    return scan(_models_dir(s, env))


def _library_models(
    library: list[LibraryEntry], configured: set[str], device: str, keep_alive: float
) -> list[ModelConfig]:
    """The library's models not configured by name: loaded on their first request, kept ``keep_alive``."""
    return [
        ModelConfig(e.name, str(e.path), device=device, preload=False, keep_alive=keep_alive)
        for e in library
        if e.name not in configured
    ]


def _with_library(units: list[UnitConfig], extra: list[ModelConfig]) -> list[UnitConfig]:
    """``[[units]]`` name their models; the library's others join the first unit."""
    if not extra:
        return units
    first = units[0]
    joined = tuple(replace(m, device=first.device) for m in extra)
    return [replace(first, models=first.models + joined), *units[1:]]


def _unit(name: str, models: tuple[ModelConfig, ...], device: str, settings: dict[str, Any]) -> UnitConfig:
    s = dict(settings)
    if "kv_cache_mb" in s:
        s["kv_cache_bytes"] = int(s.pop("kv_cache_mb")) << 20
    return UnitConfig(name, models, device=device, **s)


def _group(models: list[ModelConfig], defaults: dict[str, Any]) -> list[UnitConfig]:
    """One unit per device, holding every model of that device."""
    by_device: dict[str, list[ModelConfig]] = {}
    for m in models:
        device = detect_device() if m.device == DEVICE_AUTO else m.device
        by_device.setdefault(device, []).append(replace(m, device=device))
    return [_unit(unit_name_for(d), tuple(ms), d, defaults) for d, ms in by_device.items()]


def _units(
    tables: list[dict[str, Any]], models: list[ModelConfig], defaults: dict[str, Any], default_device: str
) -> list[UnitConfig]:
    by_name = {m.name: m for m in models}
    units, placed = [], set()
    for t in tables:
        unknown = set(t) - _UNIT_KEYS - {"name", "models"}
        if unknown:
            raise ValueError(f"unit {t.get('name', '?')!r}: unknown key(s) {', '.join(sorted(unknown))}")
        missing = [n for n in t.get("models", []) if n not in by_name]
        if missing:
            raise ValueError(f"unit {t.get('name')!r} names unknown model(s) {missing}; models: {sorted(by_name)}")
        device = str(t.get("device", default_device))
        device = detect_device() if device == DEVICE_AUTO else device
        ms = tuple(replace(by_name[n], device=device) for n in t.get("models", []))
        placed.update(m.name for m in ms)
        settings = {**defaults, **{k: v for k, v in t.items() if k in _UNIT_KEYS and k != "device"}}
        units.append(_unit(str(t.get("name", unit_name_for(device))), ms, device, settings))
    if set(by_name) - placed:
        raise ValueError(f"model(s) {sorted(set(by_name) - placed)} are in no [[units]] entry")
    return units


def _tcp(value: Any) -> tuple[str, int] | None:
    if not value:
        return None
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"tcp {value!r} is not HOST:PORT (e.g. 127.0.0.1:8000)")
    return host or "127.0.0.1", int(port)

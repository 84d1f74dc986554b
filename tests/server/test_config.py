"""Configuration: TOML < environment < flags, one resolve(), errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from muxd.config import Flags, resolve
from muxd.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "muxd.toml"
    path.write_text(text)
    return path


@pytest.fixture
def model_dirs(tiny_model_dirs):
    return tiny_model_dirs["llama"], tiny_model_dirs["qwen3"]


def test_file_then_env_then_flags(tmp_path, model_dirs):
    a, _ = model_dirs
    config = write(tmp_path, f'socket = "/tmp/file.sock"\nlog_level = "debug"\n[limits]\nqueue_per_model = 5\n'
                             f'[[models]]\nname = "a"\npath = "{a}"\ndevice = "cpu"\n')  # fmt: skip
    env = {"MUXD_SOCKET": "/tmp/env.sock", "MUXD_QUEUE_PER_MODEL": "7"}
    assert resolve(Flags(config=config), env={}).socket == Path("/tmp/file.sock")
    from_env = resolve(Flags(config=config), env=env)
    assert from_env.socket == Path("/tmp/env.sock") and from_env.limits.queue_per_model == 7
    flagged = resolve(Flags(config=config, socket=Path("/tmp/flag.sock"), queue_per_model=9), env=env)
    assert flagged.socket == Path("/tmp/flag.sock") and flagged.limits.queue_per_model == 9
    assert flagged.log_level == "debug"


def test_model_flags_replace_the_files_models_and_group_them_by_device(tmp_path, model_dirs):
    a, b = model_dirs
    config = write(tmp_path, f'[[models]]\nname = "x"\npath = "{a}"\n')
    resolved = resolve(Flags(config=config, models=(f"a={a}", f"b={b}"), device="cpu", kv_cache_mb=8), env={})
    (unit,) = resolved.units
    assert unit.name == "cpu0" and [m.name for m in unit.models] == ["a", "b"]
    assert unit.kv_cache_bytes == 8 << 20 and resolved.placement == "per-device"


def test_units_from_the_file(tmp_path, model_dirs):
    a, b = model_dirs
    text = (f'kv_cache_mb = 4\n[[models]]\nname = "a"\npath = "{a}"\nslo_ttft_ms = 100\n[[models]]\nname = "b"\n'
            f'path = "{b}"\n[[units]]\nname = "u1"\ndevice = "cpu"\nmodels = ["a"]\n[[units]]\nname = "u2"\n'
            f'device = "cpu"\nmodels = ["b"]\nkv_cache_mb = 2\n')  # fmt: skip
    resolved = resolve(Flags(config=write(tmp_path, text)), env={})
    assert [(u.name, u.kv_cache_bytes >> 20) for u in resolved.units] == [("u1", 4), ("u2", 2)]
    assert resolved.placement == "manual" and resolved.units[0].models[0].slo_ttft_ms == 100


def test_a_unit_can_ask_for_plain_streams_instead_of_disjoint_sms(tmp_path, model_dirs):
    a, b = model_dirs
    text = (f'compute_shares = "streams"\n[[models]]\nname = "a"\npath = "{a}"\n[[models]]\nname = "b"\npath = "{b}"\n'
            f'[[units]]\nname = "u1"\nmodels = ["a"]\n[[units]]\nname = "u2"\nmodels = ["b"]\ncompute_shares = "auto"\n')  # fmt: skip
    resolved = resolve(Flags(config=write(tmp_path, text)), env={})
    assert [(u.name, u.compute_shares) for u in resolved.units] == [("u1", "streams"), ("u2", "auto")]


def test_no_models_anywhere_is_the_demo(tmp_path, model_dirs):
    a, _ = model_dirs
    env = {"MUXD_CONFIG": str(tmp_path / "missing.toml"), "HOME": str(tmp_path)}
    resolved = resolve(Flags(), env=env, demo=lambda: {"smol": str(a)})
    assert resolved.placement == "demo" and [m.name for m in resolved.models] == ["smol"]
    assert resolved.socket == tmp_path / ".cache" / "muxd" / "run" / "muxd.sock"


@pytest.mark.parametrize(
    ("device", "dtype", "quantization"), [("cpu", "float32", "auto"), ("cuda:0", "bfloat16", "none")]
)
def test_the_demo_runs_the_measured_fastest_plan_on_a_cpu_and_bf16_on_a_gpu(tmp_path, model_dirs, device, dtype, quantization):
    a, _ = model_dirs
    env = {"MUXD_CONFIG": str(tmp_path / "missing.toml"), "HOME": str(tmp_path)}
    resolved = resolve(Flags(device=device), env=env, demo=lambda: {"smol": str(a)})
    (model,) = resolved.models
    assert (model.device, model.dtype, model.quantization) == (device, dtype, quantization)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("sockett = 1\n", "unknown key(s) sockett"),
        ("[limits]\nqueue_per_model = 0\n", "queue_per_model must be >= 1"),
        ('[[models]]\nname = "a"\npath = "/nowhere"\n', "no config.json"),
        ('tcp = "localhost"\n[[models]]\nname = "a"\npath = "{a}"\n', "HOST:PORT"),
        ('[[models]]\nname = "a"\npath = "{a}"\ndtype = "int3"\n', "dtype 'int3'"),
        ('[[models]]\nname = "a"\npath = "{a}"\n[[units]]\nname = "u"\nmodels = ["b"]\n', "unknown model(s) ['b']"),
        ("this is = not toml = \n", "not valid TOML"),
        ('compute_shares = "mps"\n[[models]]\nname = "a"\npath = "{a}"\n', "compute_shares 'mps' is not one of auto, streams"),
        ('placement = "magic"\n[[models]]\nname = "a"\npath = "{a}"\n', "placement = 'magic' is not one of manual, auto"),
        ('placement = "auto"\n[[models]]\nname = "a"\npath = "{a}"\n[[units]]\nname = "u"\nmodels = ["a"]\n',
         'placement = "auto" makes the units from a plan'),
    ],
)
def test_invalid_configs_are_config_errors(tmp_path, model_dirs, text, says):
    with pytest.raises(ConfigError) as e:
        resolve(Flags(config=write(tmp_path, text.replace("{a}", str(model_dirs[0])))), env={})
    assert says in e.value.message


def test_an_explicit_config_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(Flags(config=tmp_path / "nope.toml"), env={})


def test_placement_auto_keeps_the_models_and_their_rates_for_the_planner(tmp_path, model_dirs):
    a, b = model_dirs
    config = write(tmp_path, f'placement = "auto"\n[[models]]\nname = "a"\npath = "{a}"\nrate = 3.0\n')
    resolved = resolve(Flags(config=config, device="cpu"), env={})
    assert resolved.placement == "auto" and resolved.models[0].rate == 3.0
    flagged = resolve(Flags(config=write(tmp_path, ""), models=(f"b={b},rate=0.5",), placement="auto"), env={})
    assert flagged.placement == "auto" and flagged.models[0].rate == 0.5


def test_a_bad_model_flag_says_the_form(tmp_path):
    with pytest.raises(ConfigError, match="NAME=PATH"):
        resolve(Flags(config=write(tmp_path, ""), models=("justapath",)), env={})

"""Placement on this machine (``placement = "auto"``): profiles found by shape, one CPU shared by every model."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from muxd.config import DaemonConfig, ModelConfig, UnitConfig
from muxd.errors import ConfigError
from muxd.placement.local import LocalMachine, auto_place, find_profile, plan_local, precisions, read_config

SHIPPED = Path(__file__).resolve().parents[2] / "profiles"
KIND = "cpu-avx512-vnni-2c"  # the shipped profiles' kind
GiB = 1 << 30


@pytest.fixture
def models(tiny_model_dirs: dict[str, Path]) -> list[ModelConfig]:
    return [ModelConfig("tl", str(tiny_model_dirs["llama"]), quantization="q8", rate=2.0),
            ModelConfig("tq", str(tiny_model_dirs["qwen3"]), quantization="auto", rate=1.0)]


def machine(kind: str = KIND, memory: int = 8 * GiB) -> LocalMachine:
    return LocalMachine("cpu", kind, memory)


def test_a_profile_is_found_by_the_model_shape_not_its_name(models):
    profile, note = find_profile(models[0], read_config(models[0]), machine(), [SHIPPED])
    assert profile.model_signature.startswith("llama-l2-h128-i256-a4-kv2-d32-v964")
    assert note is None


def test_another_cpu_kinds_profile_stands_in_with_a_note(models):
    profile, note = find_profile(models[1], read_config(models[1]), machine("cpu-avx2-2c"), [SHIPPED])
    assert profile.device_kind == KIND
    assert "measured on cpu-avx512-vnni-2c" in note and "muxd profile" in note


def test_a_model_of_no_profiled_shape_is_an_error_naming_muxd_profile(tiny_model_dirs):
    mistral = ModelConfig("m", str(tiny_model_dirs["mistral-window"]))
    with pytest.raises(ConfigError, match="no profile of its shape.*muxd profile -m m="):
        find_profile(mistral, read_config(mistral), machine(), [SHIPPED])


def test_quantization_auto_looks_for_q8_first_then_full_precision():
    m = ModelConfig("x", "/nowhere", dtype="bfloat16", quantization="auto")
    assert precisions(m, "cpu") == [("q8", "bfloat16"), ("q8", "float32"), ("bfloat16", "bfloat16"),
                                    ("float32", "float32")]
    assert precisions(m, "cuda") == [("bfloat16", "bfloat16")]


def test_one_cpu_holds_every_model_with_decode_shares_that_add_up_to_at_most_one(models):
    unit = UnitConfig("cpu0", tuple(models), kv_cache_bytes=64 << 20)
    plan, notes = plan_local(models, machine(), unit, [SHIPPED])
    assert notes == [] and plan.unplaced == ()
    (placed,) = plan.units
    assert sorted(m.name for m in placed.models) == ["tl", "tq"]
    assert sum(m.decode_share for m in placed.models) <= 1 + 1e-9
    assert placed.kv_bytes <= 64 << 20  # the configured pool, not all the free RAM
    assert all("the only device" in line for line in plan.decisions)


def test_auto_placement_builds_the_daemons_units_from_the_plan(models, tmp_path):
    config = DaemonConfig((UnitConfig("cpu0", tuple(models), kv_cache_bytes=32 << 20, threads=2),), tmp_path / "s",
                          placement="auto")
    placed, plan, _ = auto_place(config, isa="avx512-vnni", roots=[SHIPPED])
    (unit,) = placed.units
    assert unit.device == "cpu" and unit.threads == 2
    assert {m.name for m in unit.models} == {"tl", "tq"}
    assert unit.kv_cache_bytes == plan.units[0].kv_bytes
    assert placed.placement == "auto"


def test_a_plan_is_the_same_for_the_same_inputs(models):
    unit = UnitConfig("cpu0", tuple(models))
    first, _ = plan_local(models, machine(), unit, [SHIPPED])
    second, _ = plan_local(models, machine(), unit, [SHIPPED])
    assert first == second


def test_profiles_in_a_given_directory_come_first(models, tmp_path):
    mine = tmp_path / KIND
    mine.mkdir()
    src = next((SHIPPED / KIND).glob("llama-l2-*.json"))
    data = json.loads(src.read_text())
    data["memory"]["weight_bytes"] = 12345
    (mine / src.name).write_text(json.dumps(data))
    profile, _ = find_profile(models[0], read_config(models[0]), machine(), [tmp_path, SHIPPED])
    assert profile.memory.weight_bytes == 12345
    shutil.rmtree(mine)


def test_muxd_plan_plans_this_machine_by_default_and_says_why(models):
    from typer.testing import CliRunner

    from muxd.cli.app import app

    flags = [f"--model={m.name}={m.path},quantization=q8,rate={m.rate}" for m in models]
    result = CliRunner().invoke(app, ["plan", "--json", "--profiles", str(SHIPPED), *flags])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert {m["name"] for u in plan["units"] for m in u["models"]} == {"tl", "tq"}
    assert plan["units"][0]["devices"] == "cpu" and len(plan["decisions"]) == 2
    table = CliRunner().invoke(app, ["plan", *flags])
    assert table.exit_code == 0 and "shares the CPU with" in table.output


def test_on_gpus_each_unit_is_one_gpu_with_the_plans_pool(models, tmp_path):
    """Two GPUs NVML lists (a fake pynvml), costs from a GPU kind's profiles: units cuda:0 and cuda:1 as planned."""
    from muxd.nvml import Nvml
    from tests.test_nvml import FakeNvml

    kind = "nvidia-h100-80gb-hbm3"
    (tmp_path / kind).mkdir()
    for src in (SHIPPED / KIND).glob("*-l2-*.json"):  # the tiny models' shapes, filed as if measured on the GPU
        data = json.loads(src.read_text())
        data["device_kind"] = kind
        data["model_shape"]["weights"] = "float32"  # as if measured unquantized
        (tmp_path / kind / src.name).write_text(json.dumps(data))
    gpu_models = tuple(replace(m, rate=50.0, device="cuda:0", quantization="none") for m in models)
    config = DaemonConfig((UnitConfig("cuda0", gpu_models, device="cuda:0"),), tmp_path / "s", placement="auto")
    placed, plan, notes = auto_place(config, roots=[tmp_path], nvml=Nvml(FakeNvml()))
    assert notes == [] and plan.cluster.startswith("2x" + kind)
    devices = sorted(u.device for u in placed.units)
    assert devices == ["cuda:0", "cuda:1"]  # two busy models: a GPU each
    for unit, planned in zip(placed.units, plan.units):
        assert unit.kv_cache_bytes == planned.kv_bytes <= 80 << 30
        assert {m.device for m in unit.models} == {unit.device}


def test_auto_placement_over_a_cpu_and_a_gpu_at_once_is_refused(models, tmp_path):
    units = (UnitConfig("cpu0", (models[0],)), UnitConfig("cuda0", (replace(models[1], device="cuda:0"),), device="cuda:0"))
    with pytest.raises(ConfigError, match="one kind of device"):
        auto_place(DaemonConfig(units, tmp_path / "s", placement="auto"), roots=[SHIPPED])


def test_library_models_loaded_on_demand_join_the_first_planned_unit(models, tmp_path):
    on_demand = ModelConfig("lib", "/models/lib.gguf", preload=False, keep_alive=300.0)  # no config.json to read
    config = DaemonConfig((UnitConfig("cpu0", (*models, on_demand)),), tmp_path / "s", placement="auto")
    placed, plan, _ = auto_place(config, isa="avx512-vnni", roots=[SHIPPED])
    assert "lib" not in {m.name for u in plan.units for m in u.models}
    assert {m.name for m in placed.units[0].models} == {"tl", "tq", "lib"}

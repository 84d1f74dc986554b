"""The model library in the configuration: models_dir, on-demand models, keep_alive, budgets (issue #22)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from muxd.config import Flags, resolve
from muxd.quantities import parse_bytes, parse_duration
from muxd.errors import ConfigError
from muxd.library import default_models_dir, model_shape, scan


@pytest.fixture
def library(tmp_path, tiny_model_dirs) -> Path:
    root = tmp_path / "lib"
    root.mkdir()
    shutil.copytree(tiny_model_dirs["llama"], root / "alpha")
    (root / "beta").symlink_to(tiny_model_dirs["qwen3"], target_is_directory=True)
    (root / "notes.txt").write_text("not a model")
    (root / ".alpha.partial").mkdir()  # a conversion in progress is not a model
    (root / "empty").mkdir()  # no config.json
    return root


def test_the_library_is_every_model_directory_and_gguf_file(library, smollm2_gguf_or_skip):
    (library / "smol.gguf").symlink_to(smollm2_gguf_or_skip)
    entries = {e.name: e for e in scan(library)}
    assert sorted(entries) == ["alpha", "beta", "smol"]
    assert entries["smol"].kind == "gguf" and entries["alpha"].kind == "hf"
    assert entries["smol"].file_bytes == smollm2_gguf_or_skip.stat().st_size
    assert model_shape(library / "smol.gguf").head_dim == 64  # read from the GGUF header


def test_a_missing_library_is_empty_and_the_default_follows_xdg(tmp_path):
    assert scan(tmp_path / "nowhere") == []
    assert default_models_dir({"XDG_DATA_HOME": "/data", "HOME": "/h"}) == Path("/data/muxd/models")
    assert default_models_dir({"HOME": "/h"}) == Path("/h/.local/share/muxd/models")


def test_library_models_load_on_demand_beside_the_configured_ones(tmp_path, library, tiny_model_dirs):
    config = tmp_path / "muxd.toml"
    config.write_text(f'models_dir = "{library}"\nkeep_alive = "2m"\ndevice = "cpu"\nmemory_budget = "1GiB"\n'
                      f'[[models]]\nname = "fixed"\npath = "{tiny_model_dirs["qwen2"]}"\n'
                      f'[[models]]\nname = "beta"\npinned = true\npriority = 3\n')  # fmt: skip
    resolved = resolve(Flags(config=config), env={})
    models = {m.name: m for m in resolved.models}
    assert sorted(models) == ["alpha", "beta", "fixed"] and resolved.models_dir == library
    assert models["fixed"].preload and models["fixed"].keep_alive == -1
    assert not models["alpha"].preload and models["alpha"].keep_alive == 120
    assert models["beta"].pinned and models["beta"].priority == 3 and not models["beta"].preload
    assert models["beta"].path == str(library / "beta")
    assert resolved.units[0].memory_budget == 1 << 30


def test_a_library_alone_serves_without_the_demo(tmp_path, library):
    resolved = resolve(Flags(models_dir=library, device="cpu"), env={"MUXD_CONFIG": str(tmp_path / "none.toml")},
                       demo=lambda: pytest.fail("the demo is for a daemon with no model at all"))  # fmt: skip
    assert [m.name for m in resolved.models] == ["alpha", "beta"] and resolved.placement == "per-device"


def test_a_gguf_path_is_a_model(tmp_path, smollm2_gguf_or_skip):
    resolved = resolve(Flags(models=(f"smol={smollm2_gguf_or_skip}",), device="cpu"), env={})
    assert resolved.models[0].path == str(smollm2_gguf_or_skip) and resolved.models[0].preload


def test_a_path_that_is_no_model_says_what_is_expected(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="nor a GGUF file"):
        resolve(Flags(models=(f"x={tmp_path / 'x.bin'}",), device="cpu"), env={})


@pytest.mark.parametrize("text, seconds", [(300, 300.0), ("90s", 90.0), ("5m", 300.0), ("1h", 3600.0), (-1, -1.0),
                                           ("0", 0.0), ("-5m", -1.0), ("250ms", 0.25)])  # fmt: skip
def test_durations_as_ollama_takes_them(text, seconds):
    assert parse_duration(text, "keep_alive") == seconds


@pytest.mark.parametrize("text, value", [(1 << 30, 1 << 30), ("512MiB", 512 << 20), ("8GB", 8 * 10**9), (0.5, 0.5),
                                         ("25%", 0.25), ("2g", 2 << 30)])  # fmt: skip
def test_budgets_in_bytes_or_a_fraction(text, value):
    assert parse_bytes(text, "memory_budget") == value


def test_bad_keep_alive_and_budget_are_named(tmp_path, library):
    for text, message in (('keep_alive = "soon"', "keep_alive must be seconds"),
                          ('memory_budget = "lots"', "memory_budget must be bytes"),
                          ("memory_budget = 0", "fraction of the device's memory must be in")):  # fmt: skip
        config = tmp_path / "muxd.toml"
        config.write_text(f'models_dir = "{library}"\ndevice = "cpu"\n{text}\n')
        with pytest.raises(ConfigError, match=message):
            resolve(Flags(config=config), env={})

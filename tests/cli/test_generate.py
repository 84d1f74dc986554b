"""``muxd generate``: every prompt to every model through one engine and one shared KV pool."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from muxd.cli.app import app
from muxd.cli.common import parse_model_specs
from muxd.models.demo import ensure_tiny_model


def invoke(*args: str):
    return CliRunner().invoke(app, ["generate", *args])


def test_generate_answers_the_prompt_with_both_models(tiny_model_dirs):
    result = invoke("--model", f"a={tiny_model_dirs['llama']}", "--model", f"b={tiny_model_dirs['qwen3']}",
                    "--prompt", "hi", "--max-tokens", "4")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "> hi" in out
    answers = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert {words[0] for words in answers if words} >= {"a", "b"}
    assert summary_row(out, "all")[:3] == ["all", "2", "2"]


def test_generate_runs_several_prompts_per_model_with_sampling_and_no_chat(tiny_model_dirs):
    result = invoke("-m", f"a={tiny_model_dirs['mistral']}", "-p", "one", "-p", "two", "--no-chat",
                    "--temperature", "0.8", "--seed", "3", "--max-tokens", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "> one" in result.stdout and "> two" in result.stdout
    assert summary_row(result.stdout, "a")[:3] == ["a", "2", "2"]


def summary_row(out: str, name: str) -> list[str]:
    """The cells of ``name``'s row in the summary table."""
    line = next(line for line in out.splitlines() if line.startswith(f"│ {name} "))
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_a_small_pool_preempts_but_every_request_finishes(tiny_model_dirs):
    models = [f"m{i}={tiny_model_dirs[f]}" for i, f in enumerate(["llama", "qwen2", "qwen3"])]
    args = [a for m in models for a in ("-m", m)]
    result = invoke(*args, "-p", "The quick brown fox", "-p", "What is the capital of France?",
                    "--max-tokens", "200", "--kv-cache-mb", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    preemptions = int(re.search(r"(\d+) preemptions", out).group(1))
    assert preemptions > 0
    assert summary_row(result.stdout, "all")[:3] == ["all", "6", "6"]  # requests, finished


@pytest.mark.parametrize("spec", ["nameonly", "=path", "a="])
def test_a_model_spec_without_name_and_path_is_a_clear_usage_error(spec):
    result = invoke("--model", spec, "--prompt", "hi")
    assert result.exit_code == 2
    assert "NAME=PATH" in result.stderr


def test_a_missing_model_directory_names_the_model(tmp_path):
    result = invoke("--model", f"ghost={tmp_path / 'nope'}", "--prompt", "hi")
    assert result.exit_code == 2
    assert "ghost" in result.stderr and "nope" in result.stderr


def test_model_names_must_be_unique():
    with pytest.raises(ValueError, match="twice"):
        parse_model_specs(["a=/x", "a=/y"])


def test_tiny_demo_model_is_built_once(tmp_path):
    target = ensure_tiny_model("llama", tmp_path / "tiny")
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model("llama", tmp_path / "tiny") == target
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]

"""``muxd bench constrained``: the decode step constrained against the same batch free."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from muxd.cli.app import app


def test_bench_constrained_prints_a_table_and_one_json_line(tiny_model_dirs):
    args = ["bench", "constrained", "--model", str(tiny_model_dirs["llama"]), "--batch", "3", "--prompt-tokens", "8",
            "--max-tokens", "6", "--repeats", "1", "--quantization", "none", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.strip().splitlines()[-1])
    assert "constrained" in result.output and row["batch"] == 3
    assert row["free_step_ms"] > 0 and row["constrained_step_ms"] > 0 and row["constrained_mask_ms"] > 0
    free, constrained = row["free_step_ms"], row["constrained_step_ms"]
    # The steps are printed to the µs and the cost to 4 decimals: their rounding bounds the difference.
    rounding = 5e-4 * (1 + constrained / free) / free + 5e-5
    assert row["constrained_cost"] == pytest.approx(constrained / free - 1, abs=rounding)
    assert row["mixed_free_rows_match"] is True  # free rows decode the same beside constrained ones
    assert row["constrained_tokens"] == 3 * 6  # the endless grammar keeps every row going to max_tokens

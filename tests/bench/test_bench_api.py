"""``muxd bench api`` runs end to end (few requests: a smoke test, not a measurement)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from muxd.cli.app import app


def test_bench_api_prints_a_table_and_one_json_line(tiny_model_dirs):
    args = ["bench", "api", "--model", str(tiny_model_dirs["llama"]), "--requests", "5", "--warmup", "1",
            "--stream-tokens", "8", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["bench"] == "api" and doc["requests"] == 5
    assert doc["api_p50_ms"] > 0 and doc["direct_p50_ms"] > 0
    assert doc["overhead_p50_ms"] == round(doc["api_p50_ms"] - doc["direct_p50_ms"], 3)
    assert doc["api_stream_tok_s"] > 0 and doc["direct_stream_tok_s"] > 0
    assert "front-end overhead" in result.stdout

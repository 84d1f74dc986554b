"""``muxd bench engine``: the same prompts through three engines, one result per batch size."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from muxd.bench.bandwidth import measure_read_bandwidth
from muxd.bench.engine import bench_prompts, run_engine_bench, token_digest
from muxd.cli.app import app
from muxd.cli.bench import parse_batches
from muxd.models.tokenizer import load_tokenizer

REQUIRED_KEYS = {
    "model", "dtype", "batch", "prompt_tokens", "max_tokens",
    "muxd_tok_s", "hf_generate_tok_s", "hf_cb_tok_s", "ratio_vs_hf_cb", "ratio_vs_hf_generate",
    "decode_step_ms", "prefill_ms", "roofline_step_ms", "bandwidth_gb_s", "weight_bytes", "step_vs_roofline",
    "bandwidth_peak_gb_s", "step_vs_roofline_peak",
}  # fmt: skip
TINY = {"prompt_len": 8, "max_tokens": 4, "repeats": 1}


@pytest.fixture(scope="module")
def tiny_results(tiny_model_dirs):
    return run_engine_bench(tiny_model_dirs["llama"], batches=(1, 3), **TINY)


def test_bench_reports_every_required_key_per_batch_size(tiny_results):
    assert [r["batch"] for r in tiny_results] == [1, 3]
    for row in tiny_results:
        assert REQUIRED_KEYS <= row.keys()
        assert (row["prompt_tokens"], row["max_tokens"], row["dtype"]) == (8, 4, "float32")


def test_bench_values_are_consistent(tiny_results):
    for row in tiny_results:
        for key in ("muxd_tok_s", "hf_generate_tok_s", "hf_cb_tok_s", "decode_step_ms", "prefill_ms",
                    "roofline_step_ms", "bandwidth_gb_s", "weight_bytes"):  # fmt: skip
            assert row[key] > 0, key
        # ratios are rounded to 3 decimals: a small one (a loaded machine) is off by up to 5e-4
        assert row["ratio_vs_hf_cb"] == pytest.approx(row["muxd_tok_s"] / row["hf_cb_tok_s"], rel=0.01, abs=1e-3)
        assert row["ratio_vs_hf_generate"] == pytest.approx(row["muxd_tok_s"] / row["hf_generate_tok_s"], rel=0.01,
                                                            abs=1e-3)
        assert row["step_vs_roofline"] == pytest.approx(row["decode_step_ms"] / row["roofline_step_ms"], rel=0.01)
        assert row["roofline_step_ms"] == pytest.approx(
            row["step_read_bytes"] / (row["bandwidth_gb_s"] * 1e9) * 1e3, rel=0.01
        )
        # The run's own roofline uses the probes around it; the peak is the highest of every probe.
        assert row["bandwidth_peak_gb_s"] >= row["bandwidth_gb_s"]
        assert row["step_vs_roofline_peak"] == pytest.approx(
            row["decode_step_ms"] / (row["step_read_bytes"] / (row["bandwidth_peak_gb_s"] * 1e9) * 1e3), rel=0.01
        )


def test_all_three_engines_generate_the_same_greedy_tokens(tiny_results):
    assert all(row["tokens_match_hf_generate"] == 1.0 for row in tiny_results)


def test_without_baselines_muxd_runs_alone_and_its_tokens_hash_as_with_them(tiny_model_dirs, tiny_results):
    alone = run_engine_bench(tiny_model_dirs["llama"], batches=(1, 3), baselines=False, **TINY)
    for row, full in zip(alone, tiny_results):
        assert row["hf_generate_tok_s"] is None and row["hf_cb_tok_s"] is None
        assert row["tokens_match_hf_generate"] is None and row["muxd_tok_s"] > 0
        assert len(row["output_digests"]) == row["batch"]
        assert row["output_digests"] == full["output_digests"]  # greedy: the same tokens, run after run


def test_a_token_digest_tells_rows_apart():
    assert token_digest([1, 2, 3]) == token_digest([1, 2, 3]) != token_digest([1, 23])


def test_bench_prompts_have_one_length_and_differ_per_row(tiny_model_dirs):
    tok = load_tokenizer(tiny_model_dirs["llama"])
    prompts = bench_prompts(tok.encode, 4, 20)
    assert {len(p) for p in prompts} == {20}
    assert len({tuple(p) for p in prompts}) == 4


def test_bench_rejects_an_unknown_quantization(tiny_model_dirs):
    with pytest.raises(ValueError, match="int3"):
        run_engine_bench(tiny_model_dirs["llama"], batches=(1,), quantization="int3", **TINY)


def test_bandwidth_is_a_positive_rate_and_refuses_cache_sized_buffers():
    assert measure_read_bandwidth(nbytes=64 << 20, trials=2) > 0
    with pytest.raises(ValueError, match="cache"):
        measure_read_bandwidth(nbytes=1 << 20)


def test_batch_option_takes_repeats_and_comma_lists():
    assert parse_batches(["1,16", "4"]) == [1, 16, 4]
    with pytest.raises(ValueError, match="positive integer"):
        parse_batches(["0"])


def test_cli_prints_a_table_and_the_json_list_as_the_last_line(tiny_model_dirs):
    args = ["bench", "engine", "--model", str(tiny_model_dirs["qwen3"]), "--batch", "2", "--prompt-tokens", "6",
            "--max-tokens", "3", "--repeats", "1", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "qwen3 float32: 6 prompt + 3 new tokens" in result.stdout  # the table's title
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["batch"] for r in rows] == [2]
    assert REQUIRED_KEYS <= rows[0].keys()


def test_cli_missing_model_is_a_one_line_error_with_exit_code_2(tmp_path):
    result = CliRunner().invoke(app, ["bench", "engine", "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "nope" in result.stderr

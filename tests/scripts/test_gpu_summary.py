"""``scripts/gpu_summary.py``: the GPU check's logs in, one JSON summary with issue #24's clauses judged out."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "gpu_summary.py"


@pytest.fixture(scope="module")
def gs():
    spec = importlib.util.spec_from_file_location("gpu_summary", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def engine_row(batch: int, step_ms: float, roofline_ms: float, digests: list[str]) -> dict:
    return {"model": "random:llama-3.1-8b", "dtype": "bfloat16", "batch": batch, "decode_step_ms": step_ms,
            "roofline_step_ms": roofline_ms, "step_vs_roofline": round(step_ms / roofline_ms, 3),
            "bandwidth_gb_s": 3000.0, "muxd_tok_s": 100.0, "prefill_ms": 10.0, "output_digests": digests}  # fmt: skip


def write_log(out: Path, name: str, lines: list[str], last=None) -> None:
    text = "\n".join(lines + ([json.dumps(last)] if last is not None else []))
    (out / f"{name}.log").write_text(text + "\n")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """The logs of a whole check: 8B within its roofline limit, 1B beyond it, one eager row parted."""
    (tmp_path / "steps.txt").write_text("probe 0 12\ntests 1 95\nengine-8b 0 40\n")
    write_log(tmp_path, "probe", ['{"gpu": "H100", "sms": 132}', "share 5/10 alone: 300 TFLOP/s"], {
        "gpu": "NVIDIA H100 80GB HBM3", "sms": 132, "memory_gib": 79.1, "device": "cuda", "torch": "2.x",
        "cuda": "13.0",
        "green_contexts": {"compute": {"kind": "green-contexts", "slots": 10, "note": None},
                           "two_halves_vs_solo": [0.97, 0.85]},
        "plain_streams": {"compute": {"kind": "streams"}, "two_halves_vs_solo": [0.52, 0.5]},
    })  # fmt: skip
    write_log(tmp_path, "tests", ["....F.", "1 failed, 40 passed, 2 skipped in 80.12s"])
    sixteen = [f"r{i}" for i in range(16)]
    write_log(tmp_path, "engine-8b", ["a table"], [engine_row(1, 4.5, 3.5, ["r0"]), engine_row(16, 5.0, 3.5, sixteen)])
    write_log(tmp_path, "eager-8b", [], [engine_row(1, 9.0, 3.5, ["r0"]),
                                         engine_row(16, 10.0, 3.5, sixteen[:15] + ["other"])])  # fmt: skip
    write_log(tmp_path, "engine-1b", [], [engine_row(1, 2.0, 0.6, ["x"]), engine_row(16, 2.2, 0.6, sixteen)])
    write_log(tmp_path, "eager-1b", [], [engine_row(1, 8.0, 0.6, ["x"]), engine_row(16, 9.0, 0.6, sixteen)])
    write_log(tmp_path, "mux-green", ["table"], {"policies": {"adbs": {"throughput_req_s": 5.123456, "finished": 9}}})
    return tmp_path


def summary_json(gs, out: Path, capsys) -> dict:
    gs.main(out)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def clauses_by_start(summary: dict) -> dict[str, dict]:
    return {" ".join(c["clause"].split()[:2]): c for c in summary["clauses"]}


def test_a_whole_run_prints_one_json_summary_with_every_clause_judged(gs, run_dir, capsys):
    summary = summary_json(gs, run_dir, capsys)
    c = clauses_by_start(summary)
    assert (c["8b batch-1"]["value"], c["8b batch-1"]["pass"]) == (1.286, True)  # 4.5 / 3.5 <= 1.5
    assert (c["1b batch-1"]["value"], c["1b batch-1"]["pass"]) == (3.333, False)  # 2.0 / 0.6 > 2.5
    assert (c["8b batch-16"]["value"], c["8b batch-16"]["pass"]) == (1.111, True)
    assert (c["1b batch-16"]["value"], c["1b batch-16"]["pass"]) == (1.1, True)
    tokens = c["greedy tokens"]
    assert (tokens["value"], tokens["limit"], tokens["pass"]) == (0.938, 1.0, False)  # 15 of 16 rows in 8B b16
    assert tokens["note"] == "bfloat16: 1b b1: 1.0, 1b b16: 1.0, 8b b1: 1.0, 8b b16: 0.938"
    halves = c["two half-share"]
    assert (halves["value"], halves["limit"], halves["pass"]) == (0.85, 0.8, True)
    assert halves["note"] == "compute: green-contexts"
    assert summary["all_pass"] is False


def test_the_summary_carries_the_card_steps_tests_and_engine_rows(gs, run_dir, capsys):
    summary = summary_json(gs, run_dir, capsys)
    assert summary["card"]["gpu"] == "NVIDIA H100 80GB HBM3"
    assert summary["steps"][1] == {"name": "tests", "exit": 1, "seconds": 95}
    assert summary["tests"] == {"passed": 40, "failed": 1, "errors": 0, "skipped": 2}
    row = next(r for r in summary["engine"] if r["step"] == "engine-8b" and r["batch"] == 1)
    assert (row["step_ms"], row["roofline_ms"], row["ratio"], row["bandwidth_gb_s"]) == (4.5, 3.5, 1.286, 3000.0)
    assert summary["mux"] == {"green": {"adbs": {"throughput_req_s": 5.1235, "throughput_tok_s": None,
                                                 "slo_attainment": None, "finished": 9, "requests": None,
                                                 "ttft_p99_s": None, "tpot_p99_s": None}}, "plain": None}  # fmt: skip


def test_float32_runs_judge_the_token_clause_where_they_are_there(gs, run_dir, capsys):
    write_log(run_dir, "fp32-1b", [], [engine_row(16, 3.0, 1.2, ["f"] * 16)])
    write_log(run_dir, "fp32-eager-1b", [], [engine_row(16, 9.0, 1.2, ["f"] * 16)])
    summary = summary_json(gs, run_dir, capsys)
    tokens = clauses_by_start(summary)["greedy tokens"]
    assert (tokens["value"], tokens["pass"], tokens["note"]) == (1.0, True, "float32: 1b b16: 1.0")
    assert summary["tokens_equal_eager"]["bfloat16"]["8b b16"] == 0.938  # still reported


def test_missing_figures_leave_the_clauses_unjudged(gs, tmp_path, capsys):
    (tmp_path / "engine-8b.log").write_text("Traceback (most recent call last):\nCUDA out of memory\n")
    summary = summary_json(gs, tmp_path, capsys)
    assert [c["pass"] for c in summary["clauses"]] == [None] * 6
    assert all(c["value"] is None for c in summary["clauses"])
    assert summary["all_pass"] is None and summary["card"] is None and summary["tests"] is None


def test_token_match_compares_rows_per_batch_both_runs_have(gs):
    graph = [{"batch": 1, "output_digests": ["a"]}, {"batch": 4, "output_digests": ["a", "b", "c", "d"]}]
    eager = [{"batch": 4, "output_digests": ["a", "x", "c", "y"]}]
    assert gs.token_match(graph, eager) == {4: 0.5}
    assert gs.token_match(graph, None) == {}


def test_two_halves_need_both_jobs_figures(gs):
    assert gs.halves_clause({"green_contexts": {"two_halves_vs_solo": [0.9, None]}})["pass"] is None
    assert gs.halves_clause({"green_contexts": {"two_halves_vs_solo": [0.9, 0.79]}})["pass"] is False
    assert gs.halves_clause(None)["value"] is None

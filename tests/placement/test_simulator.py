"""The simulator drives the serving scheduler on simulated time and measures it with bench mux's code."""

from __future__ import annotations

import sys
import subprocess

import numpy as np
import pytest

from muxd.placement.cost_model import CostModel
from muxd.placement.grid import LatencyGrid
from muxd.placement.simulator import SimModel, SimUnit, simulate, simulate_unit
from muxd.workload import RequestSpec, WorkloadSpec, generate

PREFILL_S_PER_TOKEN = 0.001  # at a full share
DECODE_STEP_S = 0.01


def linear_cost(models: list[str]) -> CostModel:
    """Prefill: 1 ms a token, decode: 10 ms a step, both ∝ 1 / share; batch-independent decode."""
    shares, batches, lengths = [0.25, 0.5, 1.0], [1, 64], [1, 4096]
    share = np.array(shares)[:, None, None]
    tokens = np.array(batches)[None, :, None] * np.array(lengths)[None, None, :]
    prefill = PREFILL_S_PER_TOKEN * tokens / share
    decode = DECODE_STEP_S * np.ones((3, 2, 2)) / share
    grid = lambda values: LatencyGrid(shares, batches, lengths, values)  # noqa: E731
    return CostModel({(m, 1): grid(prefill) for m in models}, {(m, 1): grid(decode) for m in models})


def unit(policy: str = "temporal", models: tuple[str, ...] = ("a",), num_pages: int = 4096) -> SimUnit:
    return SimUnit("u0", tuple(SimModel(m, pages_per_block=4) for m in models), num_pages, policy, compute_slots=4)


def test_one_request_alone_takes_its_prefill_then_a_step_per_further_token() -> None:
    request = RequestSpec("r0", "a", 0.0, prompt_tokens=100, output_tokens=5)
    (record,), makespan = simulate_unit(unit(), linear_cost(["a"]), [request])
    assert record.first_token_s == pytest.approx(100 * PREFILL_S_PER_TOKEN)
    assert record.finish_s == pytest.approx(0.1 + 4 * DECODE_STEP_S) == pytest.approx(makespan)
    assert record.output_tokens == 5


def test_arrivals_wait_for_their_time_on_the_simulated_clock() -> None:
    late = RequestSpec("r0", "a", 3.0, prompt_tokens=10, output_tokens=1)
    (record,), _ = simulate_unit(unit(), linear_cost(["a"]), [late])
    assert record.first_token_s == pytest.approx(3.0 + 10 * PREFILL_S_PER_TOKEN)


def test_the_engine_loops_time_is_added_to_every_job() -> None:
    request = RequestSpec("r0", "a", 0.0, prompt_tokens=100, output_tokens=5)
    slow = SimUnit("u0", (SimModel("a", pages_per_block=4, overhead=(0.002, 0.001)),), 4096, "temporal",
                   compute_slots=4)
    (record,), _ = simulate_unit(slow, linear_cost(["a"]), [request])
    assert record.first_token_s == pytest.approx(0.1 + 0.003)
    assert record.finish_s == pytest.approx(0.1 + 0.003 + 4 * (DECODE_STEP_S + 0.003))


@pytest.mark.parametrize("policy", ["adbs", "spatial", "temporal"])
def test_every_policy_finishes_a_two_model_workload(policy: str) -> None:
    requests = generate(WorkloadSpec(models=("a", "b"), rate=5.0, alpha=1.0, duration_s=10.0, seed=1, length_scale=0.1))
    summary = simulate([unit(policy, ("a", "b"))], linear_cost(["a", "b"]), requests)
    assert summary["finished"] == summary["requests"] == len(requests) > 20
    assert summary["throughput_tok_s"] > 0


def test_the_same_inputs_give_the_same_figures() -> None:
    requests = generate(WorkloadSpec(models=("a", "b"), rate=8.0, alpha=1.3, duration_s=10.0, seed=2, length_scale=0.1))
    runs = [simulate([unit("adbs", ("a", "b"))], linear_cost(["a", "b"]), requests) for _ in range(2)]
    assert runs[0] == runs[1]


def test_units_are_simulated_apart_and_their_records_pooled() -> None:
    requests = [RequestSpec("r0", "a", 0.0, 10, 2), RequestSpec("r1", "b", 0.0, 10, 2)]
    one = SimUnit("u0", (SimModel("a", 4),), 1024, "temporal", compute_slots=4)
    two = SimUnit("u1", (SimModel("b", 4),), 1024, "temporal", compute_slots=4)
    summary = simulate([one, two], linear_cost(["a", "b"]), requests)
    # apart, neither waits for the other: both finish at prefill + one step
    assert summary["finished"] == 2 and summary["makespan_s"] == pytest.approx(0.01 + DECODE_STEP_S)


def test_the_simulator_loads_no_torch() -> None:
    code = "import sys, muxd.placement.simulator; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_muxd_simulate_replays_a_saved_workload_on_the_shipped_profiles(tmp_path) -> None:
    import json
    from pathlib import Path

    from muxd.workload import save

    profiles = Path(__file__).resolve().parents[2] / "profiles"
    tiny = next(profiles.glob("cpu-*/llama-l2-*.json"))
    requests = generate(WorkloadSpec(models=("tiny",), rate=4.0, alpha=1.0, duration_s=5.0, seed=3, length_scale=0.1))
    save(tmp_path / "w.jsonl", [r.__class__(**{**r.__dict__, "slo_s": 1.0}) for r in requests])
    out = subprocess.run([sys.executable, "-m", "muxd", "simulate", "--workload", str(tmp_path / "w.jsonl"),
                          "--model", f"tiny={tiny}", "--slots", "2", "--json"], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(report["policies"]) == {"adbs", "spatial", "temporal"}
    assert all(p["finished"] == len(requests) for p in report["policies"].values())


def test_muxd_simulate_names_a_model_without_a_profile(tmp_path) -> None:
    from muxd.workload import save

    save(tmp_path / "w.jsonl", [RequestSpec("r0", "nobody", 0.0, 4, 4, 1.0)])
    out = subprocess.run([sys.executable, "-m", "muxd", "simulate", "--workload", str(tmp_path / "w.jsonl"),
                          "--model", "x=/nonexistent.json"], capture_output=True, text=True)  # fmt: skip
    assert out.returncode != 0 and "nonexistent.json" in out.stderr

"""``muxd bench mux``: one workload replayed under each policy, with throughput, SLO and latency figures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from typer.testing import CliRunner

from muxd import workload
from muxd.bench import mux
from muxd.cli.app import app
from muxd.cli.bench_mux import parse_models, parse_policies
from muxd.workload import RequestSpec

POLICIES = ("adbs", "spatial", "temporal")
PER_POLICY_KEYS = {
    "requests", "finished", "makespan_s", "throughput_req_s", "throughput_tok_s", "slo_attainment",
    "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "per_model",
}  # fmt: skip
TINY = dict(rate=20.0, duration_s=0.4, length_scale=0.02, dtype="float32", kv_cache_bytes=8 << 20)


@pytest.fixture(scope="module")
def two_models(tiny_model_dirs):
    return {"popular": tiny_model_dirs["llama"], "rare": tiny_model_dirs["qwen2"]}


@pytest.fixture(scope="module")
def report(two_models):
    return mux.run_mux_bench(two_models, policies=POLICIES, **TINY)


# -- the replay loop, on a fake engine and a fake clock -------------------------
@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeOutput:
    request_id: str
    output_ids: list[int]
    finished: bool


@dataclass
class FakeEngine:
    """Each step takes one second and gives every live request one token."""

    clock: FakeClock
    live: dict[str, list] = field(default_factory=dict)  # id -> [tokens so far, max tokens]
    aborted: list[str] = field(default_factory=list)

    def add_request(self, model, prompt_ids, params, request_id, slo_s=None):
        self.live[request_id] = [0, params.max_tokens]

    @property
    def has_unfinished(self) -> bool:
        return bool(self.live)

    def step(self):
        self.clock.now += 1.0
        outs = []
        for rid, state in list(self.live.items()):
            state[0] += 1
            outs.append(FakeOutput(rid, [7] * state[0], state[0] == state[1]))
            if state[0] == state[1]:
                del self.live[rid]
        return outs

    def abort(self, request_id):
        self.aborted.append(request_id)
        self.live.pop(request_id, None)


def fake_requests(*specs: tuple[float, int, float | None]) -> list[RequestSpec]:
    return [RequestSpec(f"r{i}", "m", arrival, 1, out, slo) for i, (arrival, out, slo) in enumerate(specs)]


def replay_fake(requests, **kw):
    clock = FakeClock()
    engine = FakeEngine(clock)
    prompts = {r.id: [1] for r in requests}
    records, makespan = mux.replay(engine, requests, prompts, clock=clock, sleep=clock.sleep, **kw)
    return {r.request.id: r for r in records}, makespan, engine


def test_replay_stamps_first_token_and_finish_when_the_step_returns():
    records, makespan, _ = replay_fake(fake_requests((0.0, 3, None), (10.0, 2, None)))
    assert (records["r0"].first_token_s, records["r0"].finish_s, records["r0"].output_tokens) == (1.0, 3.0, 3)
    # idle until r1 arrives at 10 s, then two one-second steps
    assert (records["r1"].first_token_s, records["r1"].finish_s) == (11.0, 12.0)
    assert makespan == 12.0


def test_latency_counts_from_the_scheduled_arrival_not_from_when_the_loop_saw_it():
    records, _, _ = replay_fake(fake_requests((0.0, 3, None), (0.5, 1, None)))
    # r1 arrived during r0's first step and is added after it returns at 1 s
    assert records["r1"].finish_s == 2.0 and records["r1"].latency() == 1.5


def test_replay_stops_at_the_deadline_and_aborts_what_is_unfinished():
    records, makespan, engine = replay_fake(fake_requests((0.0, 100, None)), deadline_s=5.0)
    assert records["r0"].finish_s is None and engine.aborted == ["r0"]
    assert makespan == pytest.approx(6.0)


def test_replay_stops_once_too_many_requests_miss_their_slo():
    reqs = fake_requests((0.0, 50, 2.0), (0.0, 50, 2.0), (0.0, 1, 100.0))
    records, makespan, _ = replay_fake(reqs, max_misses=1)
    assert makespan == 3.0  # the third step shows two requests past their 2 s SLO
    assert records["r2"].finish_s == 1.0


def test_summary_counts_unfinished_and_late_requests_as_slo_misses():
    reqs = fake_requests((0.0, 2, 10.0), (0.0, 4, 3.0), (0.0, 100, 50.0))
    records, makespan, _ = replay_fake(reqs, deadline_s=5.0)
    summary = mux.summarize(list(records.values()), makespan)
    assert summary["finished"] == 2 and summary["slo_attainment"] == pytest.approx(1 / 3)
    assert summary["throughput_req_s"] == pytest.approx(2 / makespan)
    assert summary["ttft_p50_s"] == 1.0 and summary["tpot_p50_s"] == 1.0



# -- the max-rate search ----------------------------------------------------------
def test_max_rate_search_doubles_then_bisects_below_the_true_limit():
    probed = []

    def holds(rate):
        probed.append(rate)
        return rate <= 5.0

    assert mux.search_max_rate(holds, 1.0, bisections=4) == pytest.approx(5.0, rel=0.1)
    assert probed[:4] == [1.0, 2.0, 4.0, 8.0]


def test_max_rate_search_halves_when_the_start_rate_already_fails():
    assert mux.search_max_rate(lambda r: r <= 0.3, 4.0, bisections=3) == pytest.approx(0.3, rel=0.25)


def test_max_rate_search_reports_the_highest_probe_when_every_probe_holds():
    assert mux.search_max_rate(lambda r: True, 1.0, probes=3) == 4.0


# -- the bench on real tiny models ------------------------------------------------
def test_bench_reports_every_required_key_per_policy(report):
    assert tuple(report["policies"]) == POLICIES
    for row in report["policies"].values():
        assert PER_POLICY_KEYS <= row.keys()
        assert row["requests"] == report["workload"]["requests"] > 0
        assert 0.0 <= row["slo_attainment"] <= 1.0
        assert set(row["per_model"]) <= {"popular", "rare"}


def test_bench_ratios_compare_adbs_with_each_baseline(report):
    adbs = report["policies"]["adbs"]
    for base in ("spatial", "temporal"):
        other = report["policies"][base]
        assert report[f"ratio_throughput_vs_{base}"] == pytest.approx(
            adbs["throughput_req_s"] / other["throughput_req_s"]
        )


def test_bench_records_each_models_solo_latency_and_rate(report):
    for name in ("popular", "rare"):
        model = report["models"][name]
        assert model["solo_tpot_s"] > 0 and model["solo_ttft_base_s"] >= 0
    assert report["models"]["popular"]["rate_req_s"] > report["models"]["rare"]["rate_req_s"]


def test_find_max_rate_adds_a_rate_per_policy_and_the_ratio_to_the_best_baseline(two_models):
    result = mux.run_mux_bench(
        two_models, policies=("adbs", "temporal"), find_max_rate=True, search_duration_s=0.2, **TINY
    )
    assert all(row["max_rate_req_s"] >= 0 for row in result["policies"].values())
    assert "ratio_max_rate_vs_best_baseline" in result


def test_a_workload_naming_an_unknown_model_is_refused(two_models):
    reqs = [RequestSpec("r0", "elsewhere", 0.0, 2, 2)]
    with pytest.raises(ValueError, match="elsewhere"):
        mux.run_mux_bench(two_models, policies=("temporal",), requests=reqs, **TINY)


def test_an_unknown_policy_is_refused_before_anything_runs(two_models):
    with pytest.raises(ValueError, match="unknown policy fifo"):
        mux.run_mux_bench(two_models, policies=("adbs", "fifo"), **TINY)


# -- the command ------------------------------------------------------------------
def test_cli_prints_a_table_and_the_json_object_last_and_saves_the_workload(two_models, tmp_path):
    saved = tmp_path / "w.jsonl"
    args = ["bench", "mux", *(f"--models={n}={p}" for n, p in two_models.items()), "--rate", "20", "--duration",
            "0.3", "--length-scale", "0.02", "--policies", "adbs,temporal", "--dtype", "float32",
            "--kv-cache-mb", "8", "--save-workload", str(saved), "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report["policies"]) == {"adbs", "temporal"} and report["ratio_throughput_vs_temporal"] > 0
    assert report["ratio_throughput_vs_spatial"] is None
    assert "req/s" in result.stdout
    replayed = workload.load(saved)
    assert len(replayed) == report["workload"]["requests"] and all(r.slo_s for r in replayed)


def test_cli_replays_a_saved_workload(two_models, tmp_path):
    path = tmp_path / "w.jsonl"
    workload.save(path, [RequestSpec("x", "rare", 0.0, 3, 2), RequestSpec("y", "popular", 0.05, 4, 3)])
    args = ["bench", "mux", *(f"--models={n}={p}" for n, p in two_models.items()), "--workload", str(path),
            "--policies", "temporal", "--dtype", "float32", "--kv-cache-mb", "8", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["policies"]["temporal"]["finished"] == 2


def test_cli_rejects_a_malformed_models_flag():
    result = CliRunner().invoke(app, ["bench", "mux", "--models", "no-equals-sign"])
    assert result.exit_code == 2 and "NAME=PATH" in result.output


def test_models_and_policies_options_parse_in_order():
    assert list(parse_models(["b=/x", "a=/y"])) == ["b", "a"]
    assert parse_policies("adbs, temporal,") == ("adbs", "temporal")
    with pytest.raises(ValueError, match="twice"):
        parse_models(["a=/x", "a=/y"])

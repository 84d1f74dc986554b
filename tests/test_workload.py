"""Seeded multi-model workloads: power-law popularity, Poisson arrivals, ShareGPT-like lengths, JSONL."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import replace

import pytest

from muxd import workload
from muxd.workload import RequestSpec, SoloLatency, WorkloadSpec

MODELS = ("a", "b", "c", "d")


def spec(**kw) -> WorkloadSpec:
    return WorkloadSpec(**{"models": MODELS, "rate": 10.0, "duration_s": 60.0, **kw})


def test_the_same_seed_gives_the_same_workload_and_another_seed_another():
    assert workload.generate(spec(seed=3)) == workload.generate(spec(seed=3))
    assert workload.generate(spec(seed=3)) != workload.generate(spec(seed=4))


def test_requests_come_in_arrival_order_within_the_duration_with_unique_ids():
    reqs = workload.generate(spec())
    arrivals = [r.arrival_s for r in reqs]
    assert arrivals == sorted(arrivals)
    assert 0 < arrivals[0] and arrivals[-1] < 60.0
    assert len({r.id for r in reqs}) == len(reqs)


def test_popularity_rates_follow_the_power_law_and_add_up_to_the_total():
    rates = workload.popularity_rates(MODELS, 12.0, alpha=1.3)
    assert sum(rates.values()) == pytest.approx(12.0)
    for k, model in enumerate(MODELS, start=1):
        assert rates[model] / rates["a"] == pytest.approx(k**-1.3)


def test_model_shares_of_a_big_sample_match_the_power_law():
    reqs = workload.generate(spec(num_requests=20_000, duration_s=None, alpha=1.3))
    counts = Counter(r.model for r in reqs)
    expected = workload.popularity_rates(MODELS, 1.0, alpha=1.3)
    for model in MODELS:
        assert counts[model] / len(reqs) == pytest.approx(expected[model], abs=0.01)


def test_alpha_zero_spreads_requests_evenly():
    reqs = workload.generate(spec(num_requests=8_000, duration_s=None, alpha=0.0))
    counts = Counter(r.model for r in reqs)
    assert all(counts[m] / len(reqs) == pytest.approx(0.25, abs=0.02) for m in MODELS)


def test_inter_arrival_times_are_exponential_with_mean_one_over_rate():
    reqs = workload.generate(spec(rate=5.0, num_requests=20_000, duration_s=None))
    gaps = [b.arrival_s - a.arrival_s for a, b in zip(reqs, reqs[1:])]
    assert statistics.fmean(gaps) == pytest.approx(1 / 5.0, rel=0.03)
    assert statistics.stdev(gaps) == pytest.approx(1 / 5.0, rel=0.05)  # exponential: stdev = mean


def test_a_duration_gives_about_rate_times_duration_requests():
    assert len(workload.generate(spec(rate=20.0, duration_s=100.0))) == pytest.approx(2000, rel=0.1)


def test_num_requests_gives_exactly_that_many():
    assert len(workload.generate(spec(num_requests=37, duration_s=None))) == 37


def test_lengths_have_sharegpt_means_and_stay_in_bounds():
    reqs = workload.generate(spec(num_requests=20_000, duration_s=None))
    prompts, outputs = [r.prompt_tokens for r in reqs], [r.output_tokens for r in reqs]
    # Clipping at 1024 trims the lognormal's tail a little below the nominal means.
    assert statistics.fmean(prompts) == pytest.approx(workload.SHAREGPT_PROMPT_MEAN, rel=0.1)
    assert statistics.fmean(outputs) == pytest.approx(workload.SHAREGPT_OUTPUT_MEAN, rel=0.1)
    assert min(prompts + outputs) >= 1 and max(prompts + outputs) <= 1024


def test_length_scale_shrinks_both_lengths_and_their_bounds():
    full = workload.generate(spec(num_requests=20_000, duration_s=None))
    small = workload.generate(spec(num_requests=20_000, duration_s=None, length_scale=0.1))
    for key in ("prompt_tokens", "output_tokens"):
        ratio = statistics.fmean(getattr(r, key) for r in small) / statistics.fmean(getattr(r, key) for r in full)
        assert ratio == pytest.approx(0.1, rel=0.15), key
    assert max(max(r.prompt_tokens, r.output_tokens) for r in small) <= 102
    assert [(r.model, r.arrival_s) for r in small] == [(r.model, r.arrival_s) for r in full]


def test_jsonl_round_trip_keeps_every_field_and_omits_unset_slos(tmp_path):
    reqs = workload.generate(spec(duration_s=5.0))
    reqs[0] = replace(reqs[0], slo_s=1.25)
    path = tmp_path / "w.jsonl"
    workload.save(path, reqs)
    assert workload.load(path) == reqs
    lines = path.read_text().splitlines()
    assert len(lines) == len(reqs)
    assert '"slo_s": 1.25' in lines[0] and "slo_s" not in lines[1]


def test_load_names_the_bad_line(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text('{"id": "r0", "model": "a", "arrival_s": 0, "prompt_tokens": 3, "output_tokens": 2}\n{"id": "r1"}\n')
    with pytest.raises(ValueError, match=r"w.jsonl:2"):
        workload.load(path)


def test_slo_is_the_scale_times_the_solo_latency():
    solo = {"a": SoloLatency(ttft_base_s=0.1, ttft_per_token_s=0.01, tpot_s=0.05)}
    req = RequestSpec("r0", "a", 0.0, prompt_tokens=10, output_tokens=5)
    (with_slo,) = workload.with_slos([req], solo, slo_scale=4.0)
    assert with_slo.slo_s == pytest.approx(4.0 * (0.1 + 0.01 * 10 + 0.05 * 4))


def test_an_slo_already_set_is_kept():
    req = RequestSpec("r0", "a", 0.0, 10, 5, slo_s=9.0)
    assert workload.with_slos([req], {}, slo_scale=4.0)[0].slo_s == 9.0


@pytest.mark.parametrize(
    "bad",
    [dict(models=()), dict(models=("a", "a")), dict(rate=0.0), dict(duration_s=None), dict(length_scale=0.0)],
)
def test_spec_rejects_what_cannot_be_generated(bad):
    with pytest.raises(ValueError):
        spec(**bad)

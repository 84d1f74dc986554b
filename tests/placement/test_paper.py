"""The paper's experiment, simulated: its setups, and a short run of all three systems."""

from __future__ import annotations

from pathlib import Path

import pytest

from muxd.placement.model_spec import paper_models
from muxd.placement.paper import PAGE_SCALE, SPATIAL_GPUS, attainment_by_scale, sim_model, spatial_units
from muxd.replay import Record
from muxd.workload import RequestSpec

COST_FILE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "muxserve-llama-a100-cost.json"
A100_BYTES = 80 << 30


def test_spatial_gives_every_model_its_dedicated_gpus_and_uses_all_32() -> None:
    specs = paper_models(0.9)
    units = spatial_units(specs, A100_BYTES, levels=3)
    assert len(units) == 19 and sum(SPATIAL_GPUS[s.cost_name] for s in specs) == 32
    assert all(len(u.models) == 1 and u.num_pages > 0 for u in units)


def test_scaled_pages_keep_every_models_blocks_exact() -> None:
    for spec in paper_models(0.9):
        assert sim_model(spec, 1).pages_per_block * PAGE_SCALE == spec.layers * spec.kv_heads


def test_attainment_counts_finished_requests_within_scale_times_solo() -> None:
    fast = Record(RequestSpec("a", "m", 0.0, 10, 10), first_token_s=0.1, finish_s=1.5, output_tokens=10)
    slow = Record(RequestSpec("b", "m", 0.0, 10, 10), first_token_s=0.1, finish_s=3.5, output_tokens=10)
    lost = Record(RequestSpec("c", "m", 0.0, 10, 10))
    got = attainment_by_scale([fast, slow, lost], {"a": 1.0, "b": 1.0, "c": 1.0}, scales=(1, 2, 4))
    assert got == {1: 0.0, 2: pytest.approx(1 / 3), 4: pytest.approx(2 / 3)}


@pytest.mark.skipif(not COST_FILE.exists(), reason="the MuxServe cost file is not in ../shared/data")
def test_a_short_paper_run_simulates_all_three_systems() -> None:
    from muxd.placement.cost_model import CostModel
    from muxd.placement.paper import run_alpha, share_levels

    costs = CostModel.from_muxserve_file(COST_FILE)
    assert share_levels(costs) == 3  # the file's smallest share is 30 % of the SMs
    out = run_alpha(costs, 1.3, duration_s=2.0)
    for system in ("muxd", "spatial", "temporal"):
        assert out[system]["finished"] > 0 and 0 <= out[system]["slo_attainment"][20] <= 1
    assert out["ratio_throughput_vs_spatial"] > 0

"""The cost model on MuxServe's A100 cost file, read by path; every test skips without it.

The file is third-party data outside the repository (``../shared/data``);
see its README there.
"""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muxd.placement.cost_model import CostModel

A100_FILE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "muxserve-llama-a100-cost.json"

pytestmark = pytest.mark.skipif(not A100_FILE.exists(), reason=f"the MuxServe cost file is not at {A100_FILE}")

MODEL_TPS = [("llama-7b", 1), ("llama-7b", 8), ("llama-13b", 2), ("llama-30b", 4), ("llama-65b", 8)]


@pytest.fixture(scope="module")
def a100() -> CostModel:
    return CostModel.from_muxserve_file(A100_FILE)


@pytest.fixture(scope="module")
def raw() -> dict:
    return json.loads(A100_FILE.read_text())


def test_every_minus_one_is_filled_and_flagged(a100, raw):
    minus_ones = sum(
        cell[kind] == -1
        for by_gpus in raw.values() for by_sm in by_gpus.values() for by_batch in by_sm.values()
        for by_len in by_batch.values() for cell in by_len.values() for kind in ("prefill", "decoding")
    )
    grids = [grid for m in a100.models() for tp in a100.tp_degrees(m) for grid in a100.grids(m, tp)]
    flagged = sum(int(grid.filled.sum()) for grid in grids)
    assert minus_ones == flagged == 1246


def test_exact_at_every_measured_cell_left_as_measured(a100, raw):
    checked = 0
    for model, by_gpus in raw.items():
        for gpus, by_sm in by_gpus.items():
            prefill, decode = a100.grids(model, int(gpus))
            for grid, kind in ((prefill, "prefill"), (decode, "decoding")):
                for i, s in enumerate(grid.shares):
                    for j, b in enumerate(grid.batches):
                        for k, n in enumerate(grid.lengths):
                            if grid.filled[i, j, k] or grid.adjusted[i, j, k]:
                                continue
                            ms = by_sm[str(round(s * 100))][str(int(b))][str(int(n))][kind]
                            assert grid(s, b, n) == ms / 1000
                            checked += 1
    assert checked > 5000


@settings(max_examples=300, deadline=None)
@given(
    model_tp=st.sampled_from(MODEL_TPS),
    share=st.floats(0.05, 1.2),
    batch=st.floats(0, 3000),
    length=st.floats(0, 8192),
    axis=st.sampled_from(["share", "batch", "length"]),
    step=st.floats(0, 4096),
)
def test_monotone_in_every_axis_anywhere(a100, model_tp, share, batch, length, axis, step):
    model, tp = model_tp
    slower = {
        "share": (share / (1 + step / 64), batch, length),
        "batch": (share, batch + step, length),
        "length": (share, batch, length + step),
    }[axis]
    for cost in (a100.prefill_s, a100.decode_s):
        assert cost(model, tp, *slower) >= cost(model, tp, share, batch, length) * (1 - 1e-12)


def test_sharegpt_contexts_past_512_grow_linearly(a100):
    at = [a100.decode_s("llama-7b", 1, 0.5, 16, n) for n in (512, 1024, 2048)]
    assert at[0] < at[1] < at[2]
    assert at[2] - at[1] == pytest.approx(2 * (at[1] - at[0]), rel=1e-9)

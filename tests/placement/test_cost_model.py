"""CostModel: profiles and the MuxServe file in, seconds of prefill and decode out.

Every test builds its own small inputs; the reference A100 file is used only
by test_a100.py, which skips without it.
"""

import json
import math

import pytest

from muxd.errors import ConfigError
from muxd.placement.cost_model import (
    CostModel,
    LatencyTable,
    MemoryFigures,
    Profile,
    Provenance,
    load_profile,
    profile_path,
    save_profile,
)


def muxserve_doc() -> dict:
    """A MuxServe-format file: one model on 1 GPU, SM % 50 and 100, batches 1 and 8, lengths 32, 64, 128.

    Keys are strings listed out of numeric order on purpose ("128" before "32";
    "100" before "50"); prefill ms = batch x length / 32 x (100 / SM %), decode = 10 + batch.
    """
    return {
        "llama-7b": {
            "1": {
                sm: {
                    b: {n: {"prefill": int(b) * int(n) / 32 * 100 / int(sm), "decoding": 10.0 + int(b)}
                        for n in ("128", "32", "64")}
                    for b in ("8", "1")
                }
                for sm in ("100", "50")
            }
        }
    }


@pytest.fixture
def muxserve_file(tmp_path):
    def write(doc):
        path = tmp_path / "cost.json"
        path.write_text(json.dumps(doc))
        return path

    return write


def small_profile(**changes) -> Profile:
    fields = dict(
        device_kind="cpu-avx2-2c",
        model_signature="llama-l2-h64-kv2-d32-float32",
        model_shape={"layers": 2, "hidden_size": 64, "kv_heads": 2, "head_dim": 32, "dtype": "float32"},
        provenance=Provenance(device="test CPU", torch="2.5.1", muxd_version="0.1.0", date="2025-01-31T12:00:00Z",
                              commit="cda49ee"),
        memory=MemoryFigures(weight_bytes=1_000_000, bytes_per_kv_page=4096, pages_per_token=0.25),
        prefill=LatencyTable(shares=[0.5, 1.0], batches=[1, 4], lengths=[16, 64],
                             seconds=[[[0.02, 0.08], [0.08, None]], [[0.01, 0.04], [0.04, 0.16]]]),
        decode=LatencyTable(shares=[0.5, 1.0], batches=[1, 4], lengths=[16, 64],
                            seconds=[[[0.004, 0.005], [0.006, 0.008]], [[0.002, 0.0025], [0.003, 0.004]]]),
    )
    fields.update(changes)
    return Profile(**fields)


def test_muxserve_keys_are_sorted_as_numbers(muxserve_file):
    model = CostModel.from_muxserve_file(muxserve_file(muxserve_doc()))
    prefill, _ = model.grids("llama-7b", 1)
    assert prefill.lengths == [32.0, 64.0, 128.0]  # "32" < "64" < "128", not as strings
    assert prefill.shares == [0.5, 1.0]
    assert prefill.batches == [1.0, 8.0]


def test_muxserve_units_become_seconds_shares_and_tp_degrees(muxserve_file):
    model = CostModel.from_muxserve_file(muxserve_file(muxserve_doc()))
    assert model.models() == ["llama-7b"] and model.tp_degrees("llama-7b") == [1]
    assert model.prefill_s("llama-7b", 1, 0.5, 8, 128) == pytest.approx(8 * 128 / 32 * 2 / 1000)
    assert model.decode_s("llama-7b", 1, 1.0, 8, 64) == pytest.approx(0.018)


def test_muxserve_minus_one_is_a_missing_cell_filled_and_flagged(muxserve_file):
    doc = muxserve_doc()
    doc["llama-7b"]["1"]["100"]["8"]["128"]["prefill"] = -1
    prefill, decode = CostModel.from_muxserve_file(muxserve_file(doc)).grids("llama-7b", 1)
    assert prefill.filled.sum() == 1 and prefill.filled[1, 1, 2]
    assert not decode.filled.any()
    # SM 50 % measured it; the two shares' ratio at the cells below it is 2 everywhere here: exact
    assert prefill(1.0, 8, 128) == pytest.approx(8 * 128 / 32 / 1000)


def test_an_absent_muxserve_cell_is_missing_too(muxserve_file):
    doc = muxserve_doc()
    del doc["llama-7b"]["1"]["50"]["8"]["128"]
    prefill, _ = CostModel.from_muxserve_file(muxserve_file(doc)).grids("llama-7b", 1)
    assert prefill.filled[0, 1, 2]


def test_an_unreadable_muxserve_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the MuxServe cost file"):
        CostModel.from_muxserve_file(tmp_path / "absent.json")


def test_an_unknown_model_or_degree_is_a_config_error_naming_what_there_is(muxserve_file):
    model = CostModel.from_muxserve_file(muxserve_file(muxserve_doc()))
    with pytest.raises(ConfigError, match=r"'llama-7b' at tensor-parallel degree 2; profiled: llama-7b \(tp 1\)"):
        model.decode_s("llama-7b", 2, 1.0, 1, 32)
    with pytest.raises(ConfigError, match="'llama-13b'"):
        model.prefill_s("llama-13b", 1, 1.0, 1, 32)


def test_a_profile_round_trips_through_its_file(tmp_path):
    profile = small_profile()
    path = save_profile(profile, profile_path(tmp_path, profile.device_kind, profile.model_signature))
    assert path == tmp_path / "cpu-avx2-2c" / "llama-l2-h64-kv2-d32-float32.json"
    loaded = load_profile(path)
    assert loaded == profile
    model = CostModel.from_profile(path)
    assert model.models() == ["llama-l2-h64-kv2-d32-float32"]
    assert model.prefill_s("llama-l2-h64-kv2-d32-float32", 1, 1.0, 4, 64) == 0.16
    assert model.decode_s("llama-l2-h64-kv2-d32-float32", 1, 0.5, 1, 40) == pytest.approx(0.0045)


def test_a_profile_null_cell_is_missing_filled_and_flagged():
    prefill, _ = CostModel.from_profile(small_profile(), name="tiny").grids("tiny", 1)
    assert prefill.filled.tolist() == [[[False, False], [False, True]], [[False, False], [False, False]]]
    # share 1.0 measured it (0.16); share 0.5 takes twice as long at the cells below it
    assert prefill(0.5, 4, 64) == pytest.approx(0.32)


def test_a_profile_answers_under_the_name_given_and_its_tp_degree():
    model = CostModel.from_profile(small_profile(tensor_parallel=2), name="tiny")
    assert model.tp_degrees("tiny") == [2]


def test_memory_figures_give_kv_bytes_per_token():
    assert small_profile().memory.kv_bytes_per_token == 1024


def test_an_invalid_profile_is_a_config_error_naming_the_file(tmp_path):
    doc = json.loads(small_profile().model_dump_json())
    doc["decode"]["lengths"] = [64, 16]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"bad.json is not a valid muxd profile \(decode: .*length axis must be"):
        load_profile(path)


def test_a_profile_grid_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="does not match"):
        LatencyTable(shares=[1.0], batches=[1, 2], lengths=[16], seconds=[[[0.1]]])


def test_a_ragged_profile_grid_is_refused():
    with pytest.raises(ValueError, match="nest of lists of equal lengths"):
        LatencyTable(shares=[1.0], batches=[1, 2], lengths=[16], seconds=[[[0.1], [0.1, 0.2]]])


def test_a_signature_that_is_not_a_file_name_is_refused():
    with pytest.raises(ValueError, match="model_signature"):
        small_profile(model_signature="../llama")


def test_union_holds_every_part_and_refuses_a_model_twice(muxserve_file):
    a = CostModel.from_profile(small_profile(), name="tiny")
    b = CostModel.from_muxserve_file(muxserve_file(muxserve_doc()))
    both = CostModel.union([a, b])
    assert both.models() == ["llama-7b", "tiny"]
    assert both.decode_s("tiny", 1, 1.0, 1, 16) == 0.002
    with pytest.raises(ValueError, match="two cost sources for model 'tiny' at tp 1"):
        CostModel.union([a, a])


def test_queries_answer_plain_floats():
    model = CostModel.from_profile(small_profile(), name="tiny")
    value = model.decode_s("tiny", 1, 0.7, 3, 1000)
    assert type(value) is float and math.isfinite(value)

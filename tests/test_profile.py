"""``muxd profile``: a profile measured through the serving engine, written where the cost model finds it.

The CLI runs its ``--quick`` grid on a tiny random model (a few seconds);
the rest checks what names a profile: the model's shape and precision and
the device, never a directory.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from muxd.cli.app import app
from muxd.engine import cpu_isa
from muxd.placement.cost_model import CostModel, load_profile, profile_path
from muxd.profile import QUICK, model_signature, share_slots


@pytest.fixture(scope="module")
def quick_profile(tiny_model_dirs, tmp_path_factory):
    """``muxd profile --quick`` of the tiny Llama: (its JSON line, the profiles' root)."""
    out = tmp_path_factory.mktemp("profiles")
    result = CliRunner().invoke(app, ["profile", "--quick", "--device", "cpu", "--json", "--out", str(out),
                                      "--model", f"tiny={tiny_model_dirs['llama']}"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (line,) = json.loads(result.stdout.strip().splitlines()[-1])
    return line, out


def test_quick_profile_is_written_under_its_device_kind_and_signature(quick_profile):
    line, out = quick_profile
    profile = load_profile(line["path"])
    assert line["path"] == str(profile_path(out, profile.device_kind, profile.model_signature))
    assert profile.device_kind.startswith(f"cpu-{cpu_isa.selected().name}-")
    assert profile.model_signature.startswith("llama-l2-h128-") and "tiny" not in profile.model_signature


def test_quick_profile_grids_have_the_quick_axes_and_every_share(quick_profile):
    profile = load_profile(quick_profile[0]["path"])
    slots = profile.provenance.model_extra["slots"]
    shares = [k / slots for k in share_slots(slots, "cpu")]
    for table, batches, lengths in ((profile.prefill, QUICK.prefill_batches, QUICK.prefill_lengths),
                                    (profile.decode, QUICK.decode_batches, QUICK.decode_contexts)):  # fmt: skip
        assert (table.shares, table.batches, table.lengths) == (shares, list(batches), list(lengths))
        cells = [x for plane in table.seconds for row in plane for x in row]
        assert len(cells) == len(shares) * len(batches) * len(lengths)
        assert all(x is not None and 0 < x < 10 for x in cells)


def test_quick_profile_has_memory_provenance_and_colocated_latencies(quick_profile):
    profile = load_profile(quick_profile[0]["path"])
    mem = profile.memory
    assert mem.weight_bytes > 0
    assert mem.pages_per_token == 2 * 2 / 16  # layers x KV heads per 16-token page
    assert mem.bytes_per_kv_page == 2 * 16 * 32 * 4  # K and V of 16 tokens x head_dim 32 in fp32
    prov = profile.provenance
    assert prov.device == cpu_isa.cpu_model() and prov.torch and prov.muxd_version and prov.date
    if prov.model_extra["slots"] > 1:  # one core has nothing to split
        (point,) = profile.colocated
        assert point.prefill_share + point.decode_share == 1.0
        assert min(point.prefill_s, point.decode_s, point.prefill_alone_s, point.decode_alone_s) > 0


def test_quick_profile_measures_the_engine_loops_own_time_per_job(quick_profile):
    overhead = load_profile(quick_profile[0]["path"]).engine_overhead
    assert 0 < overhead.seconds(1) < 0.05  # the loop's Python around a tiny job: well under a millisecond or so
    assert overhead.per_sequence_s >= 0


def test_the_cost_model_reads_what_profile_writes(quick_profile):
    line, _ = quick_profile
    cost = CostModel.from_profile(load_profile(line["path"]), name="tiny")
    assert cost.prefill_s("tiny", 1, 1.0, 2, 32) > 0
    assert cost.decode_s("tiny", 1, 0.5, 4, 100) >= cost.decode_s("tiny", 1, 0.5, 4, 32) > 0


def test_signature_is_the_same_whatever_the_directory_is_called(tiny_model_dirs, tmp_path):
    from muxd.models.loader import load_model

    copy = shutil.copytree(tiny_model_dirs["llama"], tmp_path / "qwen3-70b-q4-renamed")
    assert model_signature(load_model(copy)) == model_signature(load_model(tiny_model_dirs["llama"]))


def test_signature_tells_shapes_and_precisions_apart(tiny_model_dirs):
    from muxd.models.loader import load_model

    llama, qwen3 = load_model(tiny_model_dirs["llama"]), load_model(tiny_model_dirs["qwen3"])
    q8 = load_model(tiny_model_dirs["llama"], quantization="q8")
    assert len({model_signature(llama), model_signature(qwen3), model_signature(q8)}) == 3
    assert model_signature(q8).endswith("-q8-fp32") and model_signature(llama).endswith("-fp32")


def test_shares_cover_every_small_core_count_and_the_whole_device():
    assert share_slots(1, "cpu") == [1]
    assert share_slots(2, "cpu") == [1, 2]
    assert share_slots(12, "cpu") == [1, 2, 3, 4, 8, 12]
    assert share_slots(10, "cuda") == [1, 2, 4, 8, 10]


def test_a_bad_model_flag_is_a_one_line_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["profile", "--quick", "--device", "cpu", "--model", "nopath"])
    assert result.exit_code == 2
    assert "NAME=PATH" in result.output


def test_grid_leaves_out_lengths_past_the_models_context():
    from muxd.profile import DEFAULT

    fitted = DEFAULT.fit(512)
    assert fitted.decode_contexts == (16, 128, 512) and fitted.prefill_lengths == DEFAULT.prefill_lengths
    assert DEFAULT.fit(8).decode_contexts == (8,)
    assert all(n <= 100 and c <= 100 for _, n, _, c in DEFAULT.fit(100).colocated)


def test_every_shipped_profile_loads_where_its_kind_and_signature_say():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "profiles"
    paths = sorted(root.glob("*/*.json"))
    assert paths, "profiles/ ships the demo models' profiles"
    for path in paths:
        profile = load_profile(path)
        assert path == profile_path(root, profile.device_kind, profile.model_signature)
        cost = CostModel.from_profile(profile)
        assert cost.decode_s(profile.model_signature, 1, 1.0, 1, 64) > 0

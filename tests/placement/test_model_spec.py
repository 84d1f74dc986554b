"""ModelSpec and Cluster: sizes from configs (GQA-aware), the paper's models, and hardware from the command line."""

import pytest

from muxd.placement.cluster import GiB, Cluster, node_partitions
from muxd.placement.model_spec import LLAMA, ModelSpec, paper_models


def test_llama_7b_has_its_published_6_7_billion_parameters():
    spec = ModelSpec.from_hf_config("llama-7b", LLAMA["llama-7b"])
    assert spec.params == pytest.approx(6.74e9, rel=0.005)
    assert spec.weight_bytes == 2 * spec.params


def test_kv_bytes_per_token_count_kv_heads_not_attention_heads():
    mha = ModelSpec.from_hf_config("mha", LLAMA["llama-7b"])
    gqa = ModelSpec.from_hf_config("gqa", {**LLAMA["llama-7b"], "num_key_value_heads": 8})
    assert mha.kv_bytes_per_token == 2 * 32 * 4096 * 2  # 512 KiB
    assert gqa.kv_bytes_per_token * 4 == mha.kv_bytes_per_token


def test_a_config_without_a_needed_field_is_refused_naming_the_model():
    with pytest.raises(ValueError, match="'tiny'.*hidden_size"):
        ModelSpec.from_hf_config("tiny", {"num_hidden_layers": 2})


def test_the_papers_workload_is_19_models_with_the_most_popular_at_40_requests_per_second():
    models = paper_models(alpha=0.9)
    sizes = [m.costs for m in models]
    assert {s: sizes.count(s) for s in set(sizes)} == {"llama-7b": 12, "llama-13b": 4, "llama-30b": 2, "llama-65b": 1}
    rates = [m.rate for m in models]
    assert rates[0] == pytest.approx(40.0)
    assert rates == sorted(rates, reverse=True)
    assert rates[1] / rates[0] == pytest.approx(2**-0.9)


def test_devices_and_nodes_parse_into_a_cluster():
    cluster = Cluster.parse("32xA100-80GB", nodes=4)
    assert (cluster.nodes, cluster.per_node, cluster.device.memory_bytes) == (4, 8, 80 * GiB)


def test_devices_that_do_not_split_evenly_over_the_nodes_are_refused():
    with pytest.raises(ValueError, match="do not split evenly"):
        Cluster.parse("6xA100-80GB", nodes=4)


def test_a_device_kind_without_its_memory_is_refused_with_the_form_to_use():
    with pytest.raises(ValueError, match="MI300-<N>GB"):
        Cluster.parse("8xMI300")


def test_a_node_of_8_splits_into_meshes_of_1_2_4_8_in_10_ways():
    splits = node_partitions(8)
    assert len(splits) == 10
    assert splits[0] == (8,) and splits[-1] == (1,) * 8
    assert all(sum(s) == 8 for s in splits)

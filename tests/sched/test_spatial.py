from .conftest import Harness


def spatial(**kw):
    return Harness(policy="spatial", pages=200, models={"a": 2, "b": 2, "c": 2}, compute_slots=2,
                   rates={"a": 4.0, "b": 2.0, "c": 1.0}, **kw)


def test_models_are_pinned_to_fixed_partitions_by_popularity():
    h = spatial()
    h.add("x", "a", 3)
    h.launch()
    parts = {tuple(models): slots for slots, models in h.sched.partitions}
    assert parts == {("a",): 1, ("b", "c"): 1}


def test_one_job_at_a_time_per_partition():
    h = spatial()
    h.add("b1", "b", 3)
    h.add("c1", "c", 3)
    h.add("a1", "a", 3)
    jobs = h.launch()
    assert sorted(j.model for j in jobs) == ["a", "b"]  # c waits: b holds their partition
    assert h.launch() == []


def test_quotas_are_fixed_in_proportion_to_rate():
    h = spatial()
    h.add("a1", "a", 3)
    h.launch()
    quotas = {m: h.pool.quota(m) for m in "abc"}
    assert quotas["a"] > quotas["b"] > quotas["c"]
    assert sum(quotas.values()) == 200

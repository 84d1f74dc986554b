"""Property: whatever mix of finishes, aborts, preemptions and concurrent jobs, no page is lost.

The harness's prompts are ``1..n``, so they share prefixes: the prefix cache
(on by default) matches, shares, evicts and re-matches blocks all along.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import Harness

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(["a", "b", "c"]), st.integers(1, 12), st.integers(1, 12)),
        st.tuples(st.just("launch")),
        st.tuples(st.just("finish"), st.integers(0, 5)),
        st.tuples(st.just("abort"), st.integers(0, 30)),
    ),
    max_size=60,
)


@pytest.mark.parametrize("prefix_caching", [True, False])
@pytest.mark.parametrize("policy", ["temporal", "spatial", "adbs"])
@settings(max_examples=50, deadline=None)
@given(ops=ops, pages=st.integers(8, 40), page_tokens=st.integers(1, 5), budget=st.integers(1, 16))
def test_pool_returns_to_full_after_any_mix_of_requests(policy, prefix_caching, ops, pages, page_tokens, budget):
    h = Harness(
        pages=pages, page_tokens=page_tokens, models={"a": 2, "b": 3, "c": 1}, policy=policy,
        prefix_caching=prefix_caching,
        max_prefill_tokens=budget, max_batch_seqs=4, compute_slots=2, rates={"a": 3.0, "b": 1.0, "c": 0.5},
    )
    added, in_flight = [], []
    for op in ops:
        if op[0] == "add":
            added.append(h.add(f"r{len(added)}", op[1], op[2], max_tokens=op[3]).seq_id)
        elif op[0] == "launch":
            in_flight += h.launch()
        elif op[0] == "finish" and in_flight:
            h.finish(in_flight.pop(op[1] % len(in_flight)))
        elif op[0] == "abort" and added:
            h.sched.abort(added[op[1] % len(added)])
        h.pool.check_integrity()
        h.check_prefix_cache()
        assert sum(j.slots for j in h.sched.in_flight.values()) <= 2
    for job in in_flight:
        h.finish(job)
    h.drain()
    h.check_prefix_cache()
    # Finished sequences' blocks may stay cached (prompts here share prefixes);
    # nothing is held, and dropping the cache frees every page.
    h.assert_pool_whole()

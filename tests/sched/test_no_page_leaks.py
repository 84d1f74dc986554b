"""Property: whatever mix of finishes, aborts and preemptions, no page is lost."""

from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import Harness

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(["a", "b"]), st.integers(1, 12), st.integers(1, 12)),
        st.tuples(st.just("step")),
        st.tuples(st.just("abort"), st.integers(0, 30)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, pages=st.integers(6, 40), page_tokens=st.integers(1, 5), budget=st.integers(1, 16))
def test_pool_returns_to_full_after_any_mix_of_requests(ops, pages, page_tokens, budget):
    h = Harness(pages=pages, page_tokens=page_tokens, max_prefill_tokens=budget, max_batch_seqs=4)
    added = []
    for op in ops:
        if op[0] == "add":
            added.append(h.add(f"r{len(added)}", op[1], op[2], max_tokens=op[3]).seq_id)
        elif op[0] == "step":
            h.step()
        elif added:
            h.sched.abort(added[op[1] % len(added)])
        h.pool.check_integrity()
    h.drain()
    assert h.pool.num_free == h.pool.total
    assert all(h.pool.held(m) == 0 for m in h.pool.models)

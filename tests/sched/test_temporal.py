from muxd.core.job import JobKind
from muxd.core.sequence import FinishReason, SequenceStatus

from .conftest import Harness, fake_token


def test_prefill_runs_before_decode():
    h = Harness(pages=100)
    h.add("r1", "a", 5)
    h.step()  # prefill r1
    h.add("r2", "a", 5)
    assert h.step()[0].kind is JobKind.PREFILL  # r2's prefill goes before r1's decode
    assert h.step()[0].kind is JobKind.DECODE


def test_prefills_of_one_model_are_batched_within_the_token_budget():
    h = Harness(pages=100, max_prefill_tokens=12)
    for i in range(3):
        h.add(f"r{i}", "a", 5)
    job = h.step()[0]
    assert [c.num_tokens for c in job.chunks] == [5, 5, 2]  # the third is chunked


def test_long_prompt_is_prefilled_in_chunks_then_samples_once():
    h = Harness(pages=100, max_prefill_tokens=4)
    seq = h.add("r", "a", 10, max_tokens=1)
    h.drain()
    prefills = [j for j in h.jobs if j.kind is JobKind.PREFILL]
    assert [(c.start, c.end) for j in prefills for c in j.chunks] == [(0, 4), (4, 8), (8, 10)]
    assert len(seq.output_ids) == 1


def test_decode_takes_models_round_robin():
    h = Harness(pages=100)
    h.add("a1", "a", 3, max_tokens=5)
    h.add("b1", "b", 3, max_tokens=5)
    h.step(), h.step()  # both prefills
    models = [h.step()[0].model for _ in range(4)]
    assert models == ["a", "b", "a", "b"]


def test_pages_are_freed_when_a_sequence_finishes():
    h = Harness(pages=100)
    h.add("r", "a", 6, max_tokens=3)
    h.drain()
    h.assert_pool_whole()


def test_abort_frees_pages_at_once():
    h = Harness(pages=100)
    h.add("r", "a", 6, max_tokens=30)
    h.step()
    assert h.pool.num_free < 100
    h.sched.abort("r")
    assert not h.sched.has_work
    h.assert_pool_whole()


def test_youngest_sequence_is_preempted_when_the_pool_runs_out():
    # Model a: 2 pages per block of 4 tokens. 6 pages = 3 blocks.
    h = Harness(pages=6, models={"a": 2})
    old = h.add("old", "a", 4, max_tokens=8)
    young = h.add("young", "a", 4, max_tokens=8)
    h.step()  # both prefilled: 2 blocks held
    # Decoding needs a new block each: the pool has 1 free block, so young yields.
    h.step()
    assert young.num_preemptions == 1 and young.status is SequenceStatus.WAITING
    assert old.num_preemptions == 0 and old.pages
    h.drain()
    assert len(old.output_ids) == len(young.output_ids) == 8
    h.assert_pool_whole()


def test_preempted_sequence_resumes_with_the_same_tokens():
    small = Harness(pages=6, models={"a": 2})
    large = Harness(pages=60, models={"a": 2})
    outs = []
    for h in (small, large):
        seqs = [h.add(f"r{i}", "a", 3 + i, max_tokens=7) for i in range(3)]
        h.drain()
        outs.append([s.output_ids for s in seqs])
    assert outs[0] == outs[1]
    assert sum(j.kind.value == "prefill" for j in small.jobs) > sum(j.kind.value == "prefill" for j in large.jobs)


def test_request_too_large_for_the_pool_ends_with_length():
    h = Harness(pages=4, models={"a": 2})
    seq = h.add("r", "a", 4, max_tokens=20)  # needs more than 2 blocks eventually
    h.drain()
    assert seq.finish_reason is FinishReason.LENGTH
    h.assert_pool_whole()


def test_eos_finishes_unless_ignored():
    h = Harness(pages=100)
    seq = h.add("r", "a", 3, max_tokens=10)
    seq.eos_token_ids = (fake_token(seq),)  # the first sampled token is EOS
    ign = h.add("i", "a", 3, max_tokens=10, ignore_eos=True)
    ign.eos_token_ids = seq.eos_token_ids
    h.drain()
    assert seq.finish_reason is FinishReason.STOP and len(seq.output_ids) == 1
    assert ign.finish_reason is FinishReason.LENGTH and len(ign.output_ids) == 10


def test_stop_token_ids_finish_the_sequence():
    h = Harness(pages=100)
    probe = h.add("p", "a", 3, max_tokens=1)
    first = fake_token(probe)
    h.drain()
    seq = h.add("r", "a", 3, max_tokens=10, stop_token_ids=(first,))
    h.drain()
    assert seq.output_ids == [first] and seq.finish_reason is FinishReason.STOP


def test_partly_prefilled_sequence_keeps_its_seat():
    h = Harness(pages=100, max_prefill_tokens=4, max_batch_seqs=1)
    seq = h.add("r", "a", 10, max_tokens=2)
    h.add("s", "a", 3, max_tokens=2)
    h.drain()
    assert len(seq.output_ids) == 2
    h.assert_pool_whole()

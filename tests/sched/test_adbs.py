from muxd.core.job import JobKind
from muxd.core.sequence import SamplingParams, Sequence

from .conftest import Harness, run_job


def adbs(**kw):
    kw.setdefault("pages", 200)
    kw.setdefault("models", {"a": 2, "b": 2, "c": 2})
    kw.setdefault("compute_slots", 2)
    return Harness(policy="adbs", **kw)


def test_prefill_of_one_model_runs_beside_decode_of_another():
    h = adbs()
    h.add("a1", "a", 4, max_tokens=10)
    h.step()  # a1 prefilled (alone, with both slots)
    h.add("b1", "b", 4)
    jobs = h.launch()
    assert {(j.model, j.kind) for j in jobs} == {("b", JobKind.PREFILL), ("a", JobKind.DECODE)}
    assert all(j.slots == 1 for j in jobs)


def test_a_lone_prefill_gets_the_spare_slots():
    h = adbs()
    h.add("a1", "a", 4)
    (job,) = h.launch()
    assert job.kind is JobKind.PREFILL and job.slots == 2


def test_a_prefill_waiting_for_compute_holds_back_new_decodes():
    h = adbs()
    h.add("a1", "a", 4, max_tokens=10)
    h.add("b1", "b", 4, max_tokens=10)
    h.step()  # both prefilled
    decodes = h.launch()
    assert len(decodes) == 2  # both slots busy decoding
    h.add("c1", "c", 4)
    h.finish(decodes[0])
    (job,) = h.launch()  # the freed slot goes to c's prefill, not a's next decode
    assert (job.model, job.kind) == ("c", JobKind.PREFILL)


def test_no_model_starves_under_skewed_load():
    h = adbs(pages=2000)
    for i in range(40):
        h.add(f"a{i}", "a", 6, max_tokens=20)
    h.add("b0", "b", 6, max_tokens=20)
    b_done_at = None
    for step in range(400):
        h.now += 0.01
        h.step()
        if b_done_at is None and h.sched.get("b0") is None:
            b_done_at = step
        if not h.sched.has_work:
            break
    assert b_done_at is not None and b_done_at < 80  # b finished long before a's backlog


def test_request_nearest_its_deadline_is_prefilled_first():
    h = adbs(compute_slots=1)
    relaxed = h.add("a1", "a", 4)
    urgent = h.add("b1", "b", 4)
    relaxed.deadline, urgent.deadline = h.now + 100.0, h.now + 0.5
    (job,) = h.launch()
    assert job.model == "b"


def test_at_most_one_prefill_and_one_decode_job_per_model():
    h = adbs(compute_slots=4)
    h.add("a1", "a", 4, max_tokens=10)
    h.step()
    h.add("a2", "a", 4)
    h.add("a3", "a", 4)
    jobs = h.launch()
    kinds = sorted(j.kind.value for j in jobs if j.model == "a")
    assert kinds == ["decode", "prefill"]


def test_quota_blocks_prefill_then_adapts_to_the_backlog():
    # a is expected to be idle (rate 0.01), b busy: b starts with most of the pool.
    h = adbs(pages=40, models={"a": 2, "b": 2}, compute_slots=1, rates={"a": 1.0, "b": 0.01})
    h.launch()  # first tick sets the initial quotas
    assert h.pool.quota("a") > h.pool.quota("b")
    for i in range(6):
        h.add(f"b{i}", "b", 8, max_tokens=30)
    for _ in range(3):
        h.now += 1.0  # past the adaptation interval
        h.step()
    assert h.sched.quota_moves >= 1
    assert h.pool.quota("b") > 1  # b borrowed from idle a
    assert h.pool.quota("a") >= h.pool.held("a")


def test_prefills_stop_at_a_full_decode_batch_and_decodes_proceed():
    h = adbs(max_batch_seqs=2, compute_slots=1)
    for i in range(4):
        h.add(f"a{i}", "a", 4, max_tokens=10)
    (first,) = h.launch()
    assert first.kind is JobKind.PREFILL and len(first.chunks) == 2  # one batch of seats
    h.finish(first)
    (nxt,) = h.launch()
    assert nxt.kind is JobKind.DECODE  # the waiting two do not hold back decode


def test_a_lone_decode_gets_the_spare_slots_then_shares_them_with_a_new_prefill():
    h = adbs()
    h.add("a1", "a", 4, max_tokens=10)
    h.step()
    (job,) = h.launch()
    assert job.kind is JobKind.DECODE and job.slots == 2  # its matmuls use both cores
    h.add("b1", "b", 4)
    assert h.launch() == []  # no slot is free until the decode step ends
    h.finish(job)
    jobs = h.launch()  # prefill first, then the decode on what is left
    assert [(j.model, j.kind, j.slots) for j in jobs] == [("b", JobKind.PREFILL, 1), ("a", JobKind.DECODE, 1)]


def test_a_decode_keeps_one_slot_while_another_model_has_requests():
    h = adbs()
    h.sched.adapt_interval_s = float("inf")  # quotas stay as set here
    h.add("a1", "a", 4, max_tokens=10)
    h.step()  # a1 prefilled
    h.add("b1", "b", 4)
    h.pool.set_quota("b", 0)  # b has a request, but its prefill cannot start
    (job,) = h.launch()
    assert (job.model, job.kind, job.slots) == ("a", JobKind.DECODE, 1)  # the other slot stays free
    h.finish(job)
    h.sched.abort("b1")  # a alone again: its decode may take both slots
    (job,) = h.launch()
    assert (job.model, job.slots) == ("a", 2)


def test_two_lone_decodes_share_the_slots():
    h = adbs()
    h.add("a1", "a", 4, max_tokens=10)
    h.add("b1", "b", 4, max_tokens=10)
    h.step()
    jobs = h.launch()
    assert sorted((j.model, j.kind, j.slots) for j in jobs) == [("a", JobKind.DECODE, 1), ("b", JobKind.DECODE, 1)]


def test_decode_with_the_highest_response_ratio_goes_first():
    """A model with short decode steps that has waited several of them goes
    before one with long steps that has waited less than one of its own."""
    h = adbs(compute_slots=1)
    step_s = {"a": 0.05, "b": 0.005, "c": 0.01}

    def finish(job):
        result = run_job(job)
        result.duration_s = step_s[job.model] if job.kind is JobKind.DECODE else 0.02
        h.now += result.duration_s
        h.sched.complete(result)

    h.add("a1", "a", 4, max_tokens=50)
    h.add("b1", "b", 4, max_tokens=50)
    for _ in range(4):  # two prefills, then one decode of each: the step times are measured
        (job,) = h.launch()
        finish(job)
    h.sched.add(Sequence("c1", "c", [1, 2, 3, 4], SamplingParams(max_tokens=50), arrival=h.now))  # arrives now
    (prefill,) = h.launch()  # prefill first; a's and b's decodes are ready and wait
    assert prefill.kind is JobKind.PREFILL
    finish(prefill)  # 20 ms: four of b's steps, under half of one of a's
    (job,) = h.launch()
    assert job.model == "b"
    finish(job)
    (job,) = h.launch()  # a has now waited half its step; b and c have just become ready
    assert job.model == "a"

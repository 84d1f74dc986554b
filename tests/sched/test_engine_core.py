"""The engine loop without torch: EngineCore on a simulated executor and clock."""

from __future__ import annotations

import subprocess
import sys

import pytest

from muxd.clock import ManualClock
from muxd.core.job import Job, JobKind
from muxd.core.sequence import SamplingParams
from muxd.sched import SchedulerConfig
from muxd.sched.engine_core import EngineCore, ModelLimits, build_scheduler
from muxd.sched.sim_executor import SimulatedExecutor, SimulatedRunner
from tests.pool_checks import assert_pool_whole

STEP_S = {"big": 0.040, "small": 0.010}  # a decode step of one sequence on the whole unit


def cost(job: Job) -> float:
    """A toy cost model: a step per job plus a millisecond per token, slower on a smaller share."""
    return (STEP_S[job.model] + 0.001 * job.num_tokens) / job.share


class Recorder:
    """The cost model, remembering each job it timed."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Job, float]] = []

    def __call__(self, job: Job) -> float:
        self.jobs.append((job, cost(job)))
        return self.jobs[-1][1]


def make_core(policy: str = "adbs", pages: int = 400, **kw) -> tuple[EngineCore, SimulatedExecutor, ManualClock]:
    clock = ManualClock(100.0)
    executor = SimulatedExecutor(clock, kw.pop("duration", cost))
    config = SchedulerConfig(compute_slots=2, rates={"big": 1.0, "small": 3.0}, **kw)
    scheduler = build_scheduler(policy, pages, 4, {"big": 4, "small": 2}, config)
    runners = {"big": SimulatedRunner(), "small": SimulatedRunner()}
    limits = {"big": ModelLimits(max_position=64), "small": ModelLimits(eos_token_ids=(0,))}
    return EngineCore(scheduler, executor, runners, clock, limits=limits), executor, clock


def add_workload(core: EngineCore, n: int = 6) -> None:
    for i in range(n):
        model = "big" if i % 3 == 0 else "small"
        core.add_request(model, list(range(1, 6 + i)), SamplingParams(max_tokens=5 + i), request_id=f"r{i}")


def test_the_core_and_the_simulated_executor_load_no_torch():
    probe = (
        "import sys, muxd.sched.engine_core, muxd.sched.sim_executor, muxd.clock\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)


@pytest.mark.parametrize("policy", ["temporal", "spatial", "adbs"])
def test_two_models_run_to_completion_on_simulated_time(policy):
    core, executor, clock = make_core(policy)
    add_workload(core)
    final = core.run_until_done()
    assert sorted(o.request_id for o in final) == [f"r{i}" for i in range(6)]
    assert all(o.finish_reason == "length" and len(o.output_ids) == 5 + int(o.request_id[1:]) for o in final)
    assert not core.has_unfinished and not executor.busy
    assert clock() > 100.0  # simulated time passed: each job ended at its start + its cost
    assert_pool_whole(core.kv)


def test_jobs_end_at_their_start_plus_their_duration():
    core, executor, clock = make_core("temporal")
    core.add_request("small", [1, 2, 3, 4])
    (job,) = core.launch()
    (out,) = core.collect()
    assert out.output_ids == [1] and clock() == pytest.approx(100.0 + cost(job))


def test_wait_stops_at_its_timeout_before_a_job_ends():
    core, executor, clock = make_core("temporal")
    core.add_request("big", [1, 2, 3, 4])
    assert core.step(timeout=0.01) == []  # the prefill takes longer
    assert clock() == pytest.approx(100.01) and executor.busy
    (out,) = core.step()
    assert out.output_ids == [1] and not executor.busy


def test_share_seconds_add_up_to_share_times_duration_and_to_the_occupancy():
    timed = Recorder()
    core, executor, _ = make_core(duration=timed)
    add_workload(core)
    core.run_until_done()
    stats = core.stats
    assert stats.steps == len(timed.jobs)
    assert sum(stats.share_s.values()) == pytest.approx(sum(job.share * s for job, s in timed.jobs))
    assert sum(stats.share_s.values()) == pytest.approx(executor.occupied_s())  # no driver overhead here
    assert stats.busy_s == pytest.approx(sum(s for _, s in timed.jobs))
    for model in STEP_S:
        for kind in JobKind:
            mine = [(job, s) for job, s in timed.jobs if job.model == model and job.kind is kind]
            assert stats.share_s[model, kind.value] == pytest.approx(sum(job.share * s for job, s in mine))
    assert sorted(stats.step_times["decode"]) == sorted(s for job, s in timed.jobs if job.kind is JobKind.DECODE)
    assert stats.prefill_tokens == sum(job.num_tokens for job, _ in timed.jobs if job.kind is JobKind.PREFILL)
    assert stats.decode_tokens == sum(job.num_tokens for job, _ in timed.jobs if job.kind is JobKind.DECODE)
    assert stats.peak_jobs == 2  # both slots held at once: prefill of one model beside decode of the other


def test_finished_requests_are_counted_per_model():
    core, _, _ = make_core()
    add_workload(core)
    core.run_until_done()
    assert core.stats.finished == {"big": 2, "small": 4}
    assert core.stats.prompt_tokens == {"big": 5 + 8, "small": 6 + 7 + 9 + 10}
    assert core.stats.generated_tokens == {"big": 5 + 8, "small": 6 + 7 + 9 + 10}


def test_snapshot_reports_queues_pool_shares_and_events():
    core, executor, clock = make_core("temporal", pages=40)  # small pool: decodes preempt
    add_workload(core)
    snap = core.snapshot("u0")
    assert snap.unit == "u0" and snap.time == clock() == 100.0
    assert {m: (s.waiting, s.running) for m, s in snap.models.items()} == {"big": (2, 0), "small": (4, 0)}
    assert snap.models["big"].oldest_waiting_s == 0.0
    core.run_until_done()
    snap = core.snapshot("u0")
    assert snap.time == clock() and snap.steps == core.stats.steps
    assert snap.busy_s == executor.occupied_s()
    assert snap.kv_pages_total == 40 and snap.kv_pages_free == 40
    assert snap.preemptions == core.scheduler.num_preemptions > 0
    assert {e.kind for e in snap.events} == {"preemption"}
    for name, m in snap.models.items():
        assert (m.running, m.waiting, m.pages_held, m.oldest_waiting_s) == (0, 0, 0, None)
        assert m.finished == core.stats.finished[name] and m.generated_tokens == core.stats.generated_tokens[name]
        assert m.prefill_share_s == core.stats.share_s[name, "prefill"] > 0
        assert m.decode_share_s == core.stats.share_s[name, "decode"] > 0
    assert core.snapshot("u0").events == []  # events are reported once


def test_an_abort_is_reported_once_as_the_request_ends():
    core, executor, _ = make_core("temporal")
    core.add_request("small", [1, 2, 3], SamplingParams(max_tokens=50), request_id="x")
    core.step()
    core.launch()  # x's decode is in flight
    core.abort("x")
    (out,) = core.collect()
    assert (out.request_id, out.finished, out.finish_reason) == ("x", True, "abort")
    assert not core.has_unfinished and core.step() == []
    assert_pool_whole(core.kv)


def test_a_stop_string_ends_the_request_with_the_text_before_it():
    letters = "abcdefghijklmnopqrstuvwxyz"
    clock = ManualClock()
    scheduler = build_scheduler("temporal", 100, 4, {"m": 1})
    runner = SimulatedRunner(lambda seq: seq.num_tokens)  # "d", "e", "f", ... after a 3-token prompt
    core = EngineCore(
        scheduler, SimulatedExecutor(clock), {"m": runner}, clock,
        decoders={"m": lambda ids: "".join(letters[i % 26] for i in ids)},
    )  # fmt: skip
    core.add_request("m", [1, 2, 3], SamplingParams(max_tokens=20, stop=("gh",)))
    (out,) = core.run_until_done()
    assert (out.text, out.finish_reason) == ("def", "stop")


def test_requests_are_checked_against_the_models_limits():
    core, _, clock = make_core()
    with pytest.raises(KeyError, match="model 'x' not found; served models: big, small"):
        core.add_request("x", [1])
    with pytest.raises(ValueError, match="does not fit the context of 64"):
        core.add_request("big", list(range(64)))
    with pytest.raises(ValueError, match="does not fit the KV pool of 400 pages"):
        core.add_request("small", list(range(1000)))
    rid = core.add_request("small", [1, 2], slo_s=2.0)
    seq = core.scheduler.get(rid)
    assert rid.startswith("req-")
    assert (seq.arrival, seq.deadline, seq.eos_token_ids) == (clock(), clock() + 2.0, (0,))


def test_taken_jobs_leave_the_simulated_executor_at_once():
    core, executor, clock = make_core("adbs")
    core.add_request("big", [1, 2, 3])
    core.add_request("small", [1, 2, 3])
    jobs = core.launch()
    assert len(jobs) == 2
    slow = max(jobs, key=cost)
    core.complete(executor.take(slow))  # ends first, out of its order
    assert clock() == 100.0
    (result,) = executor.wait()
    assert result.job is not slow and clock() == pytest.approx(100.0 + cost(result.job))
    assert executor.wait() == [] and not executor.busy


class PendingGrammars:
    """A grammar source whose compilations finish only when the test says so."""

    def __init__(self) -> None:
        from concurrent.futures import Future

        self.futures: dict[str, Future] = {}
        self._future = Future

    def prepare(self, grammar: str):
        return self.futures.setdefault(grammar, self._future())


def make_grammar_core(grammars) -> EngineCore:
    clock = ManualClock(100.0)
    scheduler = build_scheduler("temporal", 400, 4, {"small": 2})
    return EngineCore(scheduler, SimulatedExecutor(clock, cost), {"small": SimulatedRunner()}, clock, grammars={"small": grammars})


def test_a_request_waits_for_its_grammar_while_the_others_run():
    grammars = PendingGrammars()
    core = make_grammar_core(grammars)
    core.add_request("small", [1, 2, 3], SamplingParams(max_tokens=3, grammar="g"), request_id="constrained")
    core.add_request("small", [1, 2, 3], SamplingParams(max_tokens=3), request_id="free")
    done: set[str] = set()
    for _ in range(50):
        done |= {o.request_id for o in core.step() if o.finished}
    assert done == {"free"} and core.has_unfinished
    assert core.scheduler.num_waiting("small") == 0  # the constrained one is not even queued yet
    grammars.futures["g"].set_result(object())
    final = core.run_until_done()
    assert [o.request_id for o in final] == ["constrained"] and len(final[0].output_ids) == 3


def test_a_grammar_that_fails_to_compile_ends_its_request_with_the_error():
    grammars = PendingGrammars()
    core = make_grammar_core(grammars)
    core.add_request("small", [1, 2], SamplingParams(grammar="bad"), request_id="r")
    grammars.futures["bad"].set_exception(ValueError("no such rule"))
    (out,) = core.run_until_done()
    assert out.finish_reason == "abort" and "no such rule" in out.error and out.output_ids == []


def test_aborting_a_request_whose_grammar_compiles_ends_it():
    core = make_grammar_core(PendingGrammars())
    core.add_request("small", [1, 2], SamplingParams(grammar="g"), request_id="r")
    core.abort("r")
    (out,) = core.run_until_done()
    assert out.finish_reason == "abort" and not core.has_unfinished


def test_a_grammar_for_a_model_without_a_grammar_source_is_refused():
    core, _, _ = make_core()
    with pytest.raises(ValueError, match="takes no grammar"):
        core.add_request("small", [1, 2], SamplingParams(grammar="g"))

"""Compute shares on disjoint SMs: how a GPU's SM groups are dealt to the executor's slots
(``engine/green_context.py``), checked against a fake driver on any machine and on the GPU where
``MUXD_TEST_DEVICE=cuda``."""

from __future__ import annotations

import pytest
import torch

from muxd.core.job import Job, JobKind, JobResult
from muxd.engine.executor import Executor
from muxd.engine.green_context import SmPartition, deal, disjoint, min_group_sms, pick_slots

H100_SPLIT_BY_8 = [8] * 15 + [12]  # what the driver makes of an H100's 132 SMs: 15 groups of 8, a remainder of 12


def sms(groups: list[int], runs) -> list[int]:
    return [sum(groups[g] for g in run) for run in runs]


def test_every_slot_of_an_h100_gets_its_own_sms_and_two_halves_nearly_half_each():
    dealt = deal(H100_SPLIT_BY_8, 10)
    assert disjoint(dealt)
    assert sms(H100_SPLIT_BY_8, dealt) == [16, 8, 16, 16, 8, 16, 16, 8, 16, 12]
    first, second = sms(H100_SPLIT_BY_8, [sum(dealt[:5], ())]), sms(H100_SPLIT_BY_8, [sum(dealt[5:], ())])
    assert (first, second) == ([64], [68])


def test_dealing_uses_every_group_once_in_order():
    for groups, slots in ((H100_SPLIT_BY_8, 10), ([8] * 16, 4), ([4] * 27, 10), ([8] * 16 + [4], 3)):
        dealt = deal(groups, slots)
        assert [g for run in dealt for g in run] == list(range(len(groups)))


def test_with_fewer_groups_than_slots_each_slot_still_gets_a_group_but_neighbours_share():
    dealt = deal([8, 8, 8, 8], 10)
    assert all(dealt) and not disjoint(dealt)
    assert sorted({g for run in dealt for g in run}) == [0, 1, 2, 3]


def test_one_slot_gets_every_group():
    assert deal([8, 8, 12], 1) == [(0, 1, 2)]


def test_dealing_nothing_is_an_error():
    with pytest.raises(ValueError):
        deal([], 4)
    with pytest.raises(ValueError):
        deal([8], 0)


def test_smallest_groups_follow_the_architecture():
    assert [min_group_sms(major) for major in (6, 7, 8, 9, 10)] == [1, 2, 4, 8, 8]


def test_a_job_gets_consecutive_free_slots_where_there_are_some():
    assert pick_slots({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 5) == [0, 1, 2, 3, 4]
    assert pick_slots({0, 2, 3, 4, 7}, 3) == [2, 3, 4]
    assert pick_slots({0, 2, 4, 6}, 2) == [0, 2]  # no run of two: the lowest


class FakeDriver:
    """Records what the partition asks of the driver."""

    def __init__(self, groups: list[int]) -> None:
        self.groups, self.made, self.destroyed = groups, [], []

    def split(self, device: int, min_count: int) -> list[int]:
        self.min_count = min_count
        return list(self.groups)

    def context_stream(self, device: int, groups) -> tuple[int, int]:
        self.made.append(tuple(groups))
        return 100 + len(self.made), 200 + len(self.made)

    def destroy(self, context: int, stream: int) -> None:
        self.destroyed.append((context, stream))


def test_a_slot_set_gets_one_green_context_of_its_groups_made_once():
    driver = FakeDriver(H100_SPLIT_BY_8)
    part = SmPartition(driver, 0, 10, min_group_sms(9), wrap=lambda ptr: ("stream", ptr))
    assert driver.min_count == 8 and part.disjoint
    first = part.stream([0, 1, 2, 3, 4])
    again = part.stream([4, 3, 2, 1, 0])
    second = part.stream([5, 6, 7, 8, 9])
    assert first is again and first != second and part.slot_sets() == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert set(driver.made[0]).isdisjoint(driver.made[1])  # two half shares: no SM in common
    assert part.sms([0, 1, 2, 3, 4]) + part.sms([5, 6, 7, 8, 9]) == 132
    part.release()
    assert driver.destroyed == [(101, 201), (102, 202)] and part.slot_sets() == []


def test_a_cpu_executor_reports_its_shares_as_threads():
    executor = Executor(2, "cpu")
    try:
        assert executor.compute.kind == "threads" and executor.compute.slots == 2
    finally:
        executor.shutdown()


def test_half_share_jobs_on_the_gpu_run_on_disjoint_sms(device):
    if device != "cuda":
        pytest.skip("a GPU test (MUXD_TEST_DEVICE=cuda)")
    executor = Executor(10, device)
    try:
        compute = executor.compute
        if compute.kind != "green-contexts":
            pytest.skip(f"no green contexts here: {compute.note}")
        a = torch.randn(2048, 2048, device=device)

        def run(job: Job) -> JobResult:
            torch.mm(a, a)
            return JobResult(job)

        for i in range(2):
            executor.submit(Job(JobKind.PREFILL, f"m{i}", [], job_id=i, slots=5), run)
        done = executor.wait(30) + executor.wait(30)
        assert len(done) == 2 and compute.disjoint
        assert sum(compute.sms_by_slot) <= compute.sms_total and executor.green_sms()[5] < compute.sms_total
    finally:
        executor.shutdown()


def test_the_driver_resource_struct_has_cuda_h_size():
    import ctypes

    from muxd.engine.green_context import _CUdevResource

    assert ctypes.sizeof(_CUdevResource) == 144  # int type, 92 bytes internal, a 48-byte union


def test_without_a_cuda_driver_the_check_in_a_child_process_says_why():
    import ctypes.util

    from muxd.engine.green_context import driver_check

    if ctypes.util.find_library("cuda"):
        pytest.skip("this machine has a CUDA driver")
    reason = driver_check(0, 8)
    assert reason is not None and "no green contexts" in reason and "libcuda" in reason

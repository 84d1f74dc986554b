"""Run jobs of different models at the same time, each on its share of compute.

CPU: the unit's cores are its compute slots. Each job runs in a worker
thread that first sets its own intra-op thread count to the job's slots
(PyTorch's count is per thread), so a one-core decode of one model and a
one-core prefill of another really run side by side; torch ops release the
GIL. CUDA: a job's slots out of the executor's are its share of the GPU.
Each slot is dealt a disjoint group of SMs (``engine/green_context.py``)
and a job launches on a stream of a green context made of its slots' SMs,
so jobs on different slots run on different SMs; where the driver cannot
make green contexts, each slot has a plain stream and jobs share every SM.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from muxd.core.job import Job, JobKind, JobResult
from muxd.engine.green_context import SmPartition, partition_device, pick_slots
from muxd.protocol import ComputeShares

RunFn = Callable[[Job], JobResult]
T = TypeVar("T")


def on_own_thread(fn: Callable[[], T], threads: int | None = None) -> T:
    """``fn()`` on a short-lived thread with ``threads`` intra-op threads
    (default: the caller's count); its result is returned, its exception raised.

    Why: every thread that runs a parallel torch op keeps a team of OpenMP
    (libgomp) workers for as long as it lives, and once a process holds more
    such threads than it has cores, libgomp stops spinning between parallel
    regions: each of a decode step's matmuls then pays a worker wake-up and
    the second core gains nothing (SmolLM2 bf16 batch 1: 31 ms a step either
    way; 26 ms with two-thread matmuls when only the executor's threads hold
    teams). One-off parallel work (loading, a bandwidth probe, another engine
    in a bench) runs here so that its team dies with the thread.
    """
    count = torch.get_num_threads() if threads is None else threads
    box: dict[str, object] = {}

    def target() -> None:
        torch.set_num_threads(count)
        try:
            box["result"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="muxd-oneoff")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


class Executor:
    """``submit`` jobs, ``wait`` for finished ones; slot ``i`` is always worker thread ``i``.

    Fixed workers matter on CPU: every thread that runs a parallel op keeps
    its own OpenMP team, and idle teams spin for a while. Jobs handed to
    whichever pool thread is free made teams pile up and fight for the cores
    (steps 1x to 10x slower, at random); with one thread per slot, a job of
    ``k`` slots runs on the thread of its first slot with ``k`` intra-op
    threads, and at most ``slots`` threads ever compute.
    """

    def __init__(self, slots: int, device: torch.device | str = "cpu", *, green_contexts: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        if slots < 1:
            raise ValueError(f"an executor needs at least one slot, got {slots}")
        self.slots = slots
        # Occupancy, measured apart from the jobs' own timings: ∫ Σ in-flight
        # jobs' shares dt, from submit to collection. The models' share-seconds
        # (Σ share × job seconds) should add up to it, less the driver's overhead.
        self.clock = clock
        self._occupied_s = 0.0
        self._share = 0.0
        self._since = clock()
        self.device = torch.device(device)
        self._free = set(range(slots))
        self._held: dict[int, list[int]] = {}  # job id -> slot ids
        self._inboxes = [queue.SimpleQueue() for _ in range(slots)]
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._streams = _SlotStreams(self.device, slots, green_contexts) if self.device.type == "cuda" else None
        self.compute = self._streams.compute if self._streams else ComputeShares(kind="threads", slots=slots)
        self._threads = [
            threading.Thread(target=self._worker, args=(i,), name=f"muxd-slot-{i}", daemon=True) for i in range(slots)
        ]
        for t in self._threads:
            t.start()

    @property
    def busy(self) -> bool:
        return bool(self._held)

    def submit(self, job: Job, run: RunFn) -> None:
        if self._closed:
            raise RuntimeError("the executor is shut down")
        want = min(max(job.slots, 1), self.slots)
        if want > len(self._free):
            raise RuntimeError(f"job {job.job_id} wants {want} slots, {len(self._free)} are free")
        ids = pick_slots(self._free, want)
        self._free.difference_update(ids)
        self._held[job.job_id] = ids
        self._occupy(job.share)
        self._inboxes[ids[0]].put((job, run, ids))

    def wait(self, timeout: float | None = None) -> list[JobResult]:
        """Results of finished jobs; blocks until at least one finishes (or ``timeout``)."""
        if not self._held:
            return []
        try:
            items = [self._done.get(timeout=timeout)]
        except queue.Empty:
            return []
        while not self._done.empty():
            items.append(self._done.get())
        results = []
        for job, result, error in items:
            self._free.update(self._held.pop(job.job_id))
            self._occupy(-job.share)
            if error is not None:
                raise error  # a failed job raises here, in the engine's thread
            results.append(result)
        return results

    def occupied_s(self) -> float:
        """Compute-seconds the executor has held jobs: ∫ Σ in-flight shares dt, up to now."""
        self._occupy(0.0)
        return self._occupied_s

    def _occupy(self, delta: float) -> None:
        now = self.clock()
        self._occupied_s += self._share * (now - self._since)
        self._since = now
        self._share = max(0.0, self._share + delta) if self._held else 0.0

    def _worker(self, slot: int) -> None:
        while True:
            item = self._inboxes[slot].get()
            if item is None:
                return
            job, run, ids = item
            try:
                self._done.put((job, self._run(job, run, ids), None))
            except BaseException as e:  # reported to the engine, the worker lives on
                self._done.put((job, None, e))

    def _run(self, job: Job, run: RunFn, ids: list[int]) -> JobResult:
        threads = len(ids)
        if self._streams is None:
            if job.kind is JobKind.DECODE:
                # Measured on SmolLM2 (bf16, the serving default): a decode
                # step's many small ops pay OpenMP's fork/join on every call
                # on a second thread (32 ms a step on one thread, 48-55 ms on
                # two), while its matmuls, the weights' read, gain from it.
                # So the step runs on one thread and the runner gives its
                # matmuls the job's slots (engine/model.py ``linear``).
                threads = 1
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            return run(job)
        with torch.cuda.stream(self._streams.stream(ids)):
            result = run(job)
            torch.cuda.current_stream().synchronize()
            return result

    def green_sms(self) -> dict[int, int]:
        """CUDA with green contexts: the SMs a job of each share level (slot count) got, for the slot
        sets used so far; {} where jobs run on plain streams (every SM)."""
        part = self._streams.partition if self._streams else None
        return {len(ids): part.sms(ids) for ids in part.slot_sets()} if part else {}

    def shutdown(self) -> None:
        """Stop and join the workers, then let their CUDA streams go (idempotent).

        On CUDA, a worker still holding its streams and green contexts when
        the interpreter tears down aborted the process ("terminate called
        without an active exception", seen on an H200): the streams must go
        while torch's CUDA state is still alive.
        """
        if self._closed:
            return
        self._closed = True
        for inbox in self._inboxes:
            inbox.put(None)
        for t in self._threads:
            t.join(timeout=5)
        if self._streams is not None:
            torch.cuda.synchronize(self.device)
            self._streams.release()


class _SlotStreams:
    """The CUDA streams jobs run on: a green context's per slot set (``SmPartition``), or plain ones.

    A job holding every slot, and every job where there is no partition,
    runs on a plain stream of its first slot: the whole GPU. Each slot has
    its own, so jobs never queue behind each other on one stream.
    """

    def __init__(self, device: torch.device, slots: int, green_contexts: bool) -> None:
        self.slots = slots
        self.plain = [torch.cuda.Stream(device) for _ in range(slots)]
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        made = partition_device(device, slots) if green_contexts else "plain streams, as configured"
        self.partition: SmPartition | None = made if isinstance(made, SmPartition) else None
        if self.partition is None:
            self.compute = ComputeShares(kind="streams", slots=slots, sms_total=sms, note=str(made))
        else:
            self.compute = ComputeShares(kind="green-contexts", slots=slots, sms_total=sms,
                                         sms_by_slot=self.partition.sms_by_slot(), disjoint=self.partition.disjoint)  # fmt: skip

    def stream(self, ids: list[int]) -> torch.cuda.Stream:
        if self.partition is None or len(ids) >= self.slots:
            return self.plain[ids[0]]
        return self.partition.stream(ids)  # type: ignore[return-value]

    def release(self) -> None:
        """Drop the plain streams, then the green contexts' streams and contexts."""
        self.plain.clear()
        if self.partition is not None:
            self.partition.release()

"""Run jobs of different models at the same time, each on its share of compute.

CPU: the unit's cores are its compute slots. Each job runs in a worker
thread that first sets its own intra-op thread count to the job's slots
(PyTorch's count is per thread), so a one-core decode of one model and a
one-core prefill of another really run side by side; torch ops release the
GIL. CUDA: each share level gets its own stream, inside a green context
sized to the share where ``torch.cuda.green_contexts`` exists; jobs launch
on the stream of their share.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TypeVar

import torch

from muxd.core.job import Job, JobKind, JobResult

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

    def __init__(self, slots: int, device: torch.device | str = "cpu") -> None:
        if slots < 1:
            raise ValueError(f"an executor needs at least one slot, got {slots}")
        self.slots = slots
        self.device = torch.device(device)
        self._free = set(range(slots))
        self._held: dict[int, list[int]] = {}  # job id -> slot ids
        self._inboxes = [queue.SimpleQueue() for _ in range(slots)]
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._streams = _ShareStreams(self.device, slots) if self.device.type == "cuda" else None
        self._threads = [
            threading.Thread(target=self._worker, args=(i,), name=f"muxd-slot-{i}", daemon=True) for i in range(slots)
        ]
        for t in self._threads:
            t.start()

    @property
    def busy(self) -> bool:
        return bool(self._held)

    def submit(self, job: Job, run: RunFn) -> None:
        want = min(max(job.slots, 1), self.slots)
        if want > len(self._free):
            raise RuntimeError(f"job {job.job_id} wants {want} slots, {len(self._free)} are free")
        ids = sorted(self._free)[:want]
        self._free.difference_update(ids)
        self._held[job.job_id] = ids
        self._inboxes[ids[0]].put((job, run, len(ids)))

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
            if error is not None:
                raise error  # a failed job raises here, in the engine's thread
            results.append(result)
        return results

    def _worker(self, slot: int) -> None:
        while True:
            item = self._inboxes[slot].get()
            if item is None:
                return
            job, run, threads = item
            try:
                self._done.put((job, self._run(job, run, threads), None))
            except BaseException as e:  # reported to the engine, the worker lives on
                self._done.put((job, None, e))

    def _run(self, job: Job, run: RunFn, threads: int) -> JobResult:
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
        with self._streams.context(threads):
            result = run(job)
            torch.cuda.current_stream().synchronize()
            return result

    def shutdown(self) -> None:
        for inbox in self._inboxes:
            inbox.put(None)
        for t in self._threads:
            t.join(timeout=5)


class _ShareStreams:
    """One CUDA stream per share level, in a green context of that many SM groups when available."""

    def __init__(self, device: torch.device, levels: int) -> None:
        self.device = device
        self.levels = levels
        self._contexts: dict[int, object] = {}  # held so the green contexts outlive their streams
        self._streams: dict[int, torch.cuda.Stream] = {}
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        for level in range(1, levels + 1):
            ctx = None
            try:  # SMs in proportion to the share (the driver rounds to its granularity)
                from torch.cuda.green_contexts import GreenContext

                ctx = GreenContext.create(num_sms=max(1, sms * level // levels), device_id=device.index or 0)
            except (ImportError, RuntimeError):  # no green contexts: plain streams share the SMs
                ctx = None
            self._contexts[level] = ctx
            self._streams[level] = ctx.Stream() if ctx is not None else torch.cuda.Stream(device)

    def context(self, level: int):
        return torch.cuda.stream(self._streams[min(max(level, 1), self.levels)])

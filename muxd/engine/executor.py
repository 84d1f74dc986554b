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

import concurrent.futures as cf
from collections.abc import Callable

import torch

from muxd.core.job import Job, JobResult

RunFn = Callable[[Job], JobResult]


class Executor:
    """``submit`` jobs, ``wait`` for finished ones; at most ``slots`` jobs at once."""

    def __init__(self, slots: int, device: torch.device | str = "cpu") -> None:
        if slots < 1:
            raise ValueError(f"an executor needs at least one slot, got {slots}")
        self.slots = slots
        self.device = torch.device(device)
        self._pool = cf.ThreadPoolExecutor(max_workers=slots, thread_name_prefix="muxd-job")
        self._running: dict[cf.Future, Job] = {}
        self._streams = _ShareStreams(self.device, slots) if self.device.type == "cuda" else None

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def submit(self, job: Job, run: RunFn) -> None:
        self._running[self._pool.submit(self._run, job, run)] = job

    def wait(self, timeout: float | None = None) -> list[JobResult]:
        """Results of finished jobs; blocks until at least one finishes (or ``timeout``)."""
        if not self._running:
            return []
        done, _ = cf.wait(self._running, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        results = []
        for future in done:
            self._running.pop(future)
            results.append(future.result())  # a failed job raises here, in the engine's thread
        return results

    def _run(self, job: Job, run: RunFn) -> JobResult:
        if self._streams is None:
            torch.set_num_threads(max(1, job.slots))
            return run(job)
        with self._streams.context(job.slots):
            result = run(job)
            torch.cuda.current_stream().synchronize()
            return result

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _ShareStreams:
    """One CUDA stream per share level, in a green context of that many SM groups when available."""

    def __init__(self, device: torch.device, levels: int) -> None:
        self.device = device
        self.levels = levels
        self._contexts: dict[int, object] = {}
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

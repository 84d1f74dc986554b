"""Measure the memory read bandwidth this process gets: the decode roofline.

One decode step must read every weight once, so on a CPU or a GPU its floor
is ``step_read_bytes / bandwidth``. The figure differs between machines and
between runs on a shared one, so benchmarks measure it next to the numbers
they report instead of trusting a constant.
"""

from __future__ import annotations

import time

DEFAULT_BYTES = 512 << 20  # far beyond any last-level cache
MIN_BYTES = 64 << 20


def measure_read_bandwidth(
    nbytes: int = DEFAULT_BYTES, trials: int = 15, threads: int | None = None, device: str = "cpu"
) -> float:
    """Best-of-``trials`` read bandwidth in GB/s (1e9 bytes/s) of ``torch.sum`` over ``nbytes`` on ``device``.

    ``threads`` defaults to torch's current intra-op thread count, the one the
    engine's forward runs with, so the roofline matches what a step can use.
    On a GPU the buffer is eight times larger (``nbytes`` would be read in
    about the time a kernel takes to launch), and each sum is waited for.
    """
    import torch

    if nbytes < MIN_BYTES:
        raise ValueError(f"a buffer of {nbytes} bytes may fit in cache; use at least {MIN_BYTES >> 20} MiB")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        cuda = torch.device(device).type == "cuda"
        size = nbytes * 8 if cuda else nbytes
        buf = torch.ones(size // 4, dtype=torch.float32, device=device)  # written once, so every page is resident
        wait = (lambda: torch.cuda.synchronize(buf.device)) if cuda else (lambda: None)
        torch.sum(buf)  # warm-up
        wait()
        best = float("inf")
        for _ in range(trials):
            t0 = time.perf_counter()
            torch.sum(buf)
            wait()
            best = min(best, time.perf_counter() - t0)
        return buf.numel() * buf.element_size() / best / 1e9
    finally:
        torch.set_num_threads(previous)

"""Loading models on their own thread while the unit keeps serving.

A unit's driving thread runs the engine's steps; a model asked for while it
serves is read, converted (a GGUF file, once) and packed on a thread of its
own (``BackgroundLoads.start``), with one intra-op thread so that the
executor's threads keep their cores. The driving thread collects finished
loads between two steps (``BackgroundLoads.finished``) and hands each to
the engine there: a step boundary, where no job reads the model set.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from muxd.config import ModelConfig
from muxd.library import is_gguf
from muxd.models.loader import LoadedModel, load_model

log = logging.getLogger("muxd.unit")
LOAD_THREADS = 1  # intra-op threads of a background load: the serving threads keep the cores
# A load thread's nice value (Linux sets it per thread). Measured with scripts/switch_cost.py
# (SmolLM2 fp32 loading beside a SmolLM2 stream, 2 vCPUs shared with other work): nice 0 doubled
# the stream's TPOT (x2.08, load 1.5 s), 19 left it whole but took 11 s, 5 gave x1.33 and 3.1 s.
LOAD_NICE = 5


@dataclass
class LoadResult:
    name: str
    model: LoadedModel | None  # None when it failed
    error: str | None
    seconds: float
    source_dir: str


def load_configured(config: ModelConfig, device: str, threads: int | None = None) -> tuple[LoadedModel, Path]:
    """Load ``config`` on ``device``; a GGUF file is converted into the cache first (once)."""
    path = Path(config.path)
    if is_gguf(path):
        from muxd.models.gguf import ensure_converted

        path = ensure_converted(path, progress=lambda msg: log.info("%s: %s", config.name, msg))
    import torch

    count = torch.get_num_threads() if threads is None else threads
    from muxd.engine.executor import on_own_thread

    loaded = on_own_thread(lambda: load_model(path, config.dtype, device, quantization=config.quantization), count)
    return loaded, path


def lower_priority() -> None:
    """Give this thread (and the threads it starts, which inherit it) a lower CPU priority:
    where cores are short, the serving threads' decode steps go first and the load takes longer."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOAD_NICE)
    except (OSError, AttributeError):  # not Linux, or not allowed: the load runs at normal priority
        pass


class BackgroundLoads:
    """At most one load per model at a time, each on a short-lived thread of its own."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._done: queue.SimpleQueue[LoadResult] = queue.SimpleQueue()
        self._running: set[str] = set()

    @property
    def pending(self) -> bool:
        return bool(self._running)

    def loading(self, name: str) -> bool:
        return name in self._running

    def start(self, config: ModelConfig) -> bool:
        """Begin loading ``config``; False if it is already loading."""
        if config.name in self._running:
            return False
        self._running.add(config.name)
        threading.Thread(target=self._load, args=(config,), name=f"muxd-load-{config.name}", daemon=True).start()
        return True

    def finished(self) -> list[LoadResult]:
        """Loads finished since the last call (driving thread only)."""
        out = []
        while True:
            try:
                result = self._done.get_nowait()
            except queue.Empty:
                return out
            self._running.discard(result.name)
            out.append(result)

    def _load(self, config: ModelConfig) -> None:
        t0 = time.perf_counter()
        lower_priority()
        try:
            loaded, path = load_configured(config, self.device, LOAD_THREADS)
        except Exception as e:  # noqa: BLE001 - reported to the front end, which fails the waiting requests
            log.exception("loading %s failed", config.name)
            self._done.put(LoadResult(config.name, None, f"{type(e).__name__}: {e}", time.perf_counter() - t0, ""))
            return
        self._done.put(LoadResult(config.name, loaded, None, time.perf_counter() - t0, str(path)))

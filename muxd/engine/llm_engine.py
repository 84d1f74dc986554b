"""An in-process engine: several models, one KV pool, continuous batching.

The torch side of the engine: the page tensors, a runner per model and the
thread executor, driven by the torch-free loop of ``sched/engine_core.py``
(a scheduling policy, ``temporal`` by default or ``adbs`` / ``spatial``,
picks jobs; the executor runs them side by side on their compute slots;
``step`` applies the results). ``muxd generate``, the benches and the unit
process (``muxd/unit.py``) all drive this class.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch

from muxd.engine.executor import Executor, on_own_thread
from muxd.engine.grammar import Grammars
from muxd.engine.kv_cache import KVCache, KVLayout
from muxd.engine.runner import ModelRunner
from muxd.models.loader import LoadedModel
from muxd.sched import SchedulerConfig
from muxd.sched.engine_core import Decode, EngineCore, ModelLimits, RequestOutput, build_scheduler

__all__ = ["CUDA_SHARE_LEVELS", "LLMEngine", "RequestOutput", "load_engine"]

CUDA_SHARE_LEVELS = 10  # a GPU's compute in tenths, as MuxServe's MPS shares


class LLMEngine(EngineCore):
    """Serve ``models`` (name -> loaded model) from one KV pool of ``kv_cache_bytes``.

    The loop, the requests and the stats are ``EngineCore``'s
    (``sched/engine_core.py``, no torch: ``add_request``, ``abort``, ``step``,
    ``snapshot``, ``run_until_done``, ``generate``, ``stats``, ``scheduler``,
    ``kv``, ``pool``); this class builds what it drives: the page tensors
    (``kv_cache``), one runner per model and the thread executor.

    ``prefix_caching`` (default on) lets a request start from cached blocks
    of an earlier request's identical prefix (``core/kv_manager.py``).
    ``green_contexts`` (CUDA only) runs compute shares in green contexts;
    off, every share is a plain stream over all SMs (torch's green contexts
    of a unit overlap: see docs/gpu-check.md).
    """

    executor: Executor  # the core's JobExecutor, here the thread executor
    runners: dict[str, ModelRunner]

    def __init__(
        self,
        models: dict[str, LoadedModel],
        *,
        kv_cache_bytes: int = 256 << 20,
        page_tokens: int = 16,
        policy: str = "temporal",
        cores: int | None = None,
        rates: dict[str, float] | None = None,
        scheduler_config: SchedulerConfig | None = None,
        decoders: dict[str, Decode] | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
        prefix_caching: bool = True,
        green_contexts: bool = True,
    ) -> None:
        if not models:
            raise ValueError("an engine needs at least one model")
        devices = {m.device for m in models.values()}
        if len(devices) != 1:
            raise ValueError(f"all models of one engine share a device, got {sorted(map(str, devices))}")
        layout = KVLayout.for_models(page_tokens, [(m.spec.head_dim, m.dtype) for m in models.values()])
        device = devices.pop()
        slots = cores or (torch.get_num_threads() if device.type == "cpu" else CUDA_SHARE_LEVELS)
        # The driving thread only schedules: parallel work belongs to the
        # executor's threads, so even zeroing the pool runs off it (see
        # ``on_own_thread``), as ``load_model`` does.
        self.kv_cache = on_own_thread(lambda: KVCache.from_budget(layout, kv_cache_bytes, device))
        config = replace(scheduler_config or SchedulerConfig(), compute_slots=slots, rates=dict(rates or {}))
        # Prefix caching reuses computed blocks of shared prompt prefixes
        # (chat templates, earlier turns); off, every prompt is recomputed.
        scheduler = build_scheduler(
            policy,
            self.kv_cache.usable_pages,
            page_tokens,
            {name: m.spec.pages_per_block for name, m in models.items()},
            config,
            prefix_caching=prefix_caching,
        )
        executor = Executor(slots, device, green_contexts=green_contexts, clock=clock)
        self.models = models
        # Constrained decoding, for the models with a tokenizer.json llguidance can read.
        self.grammars = {
            name: Grammars(m.path / "tokenizer.json", m.spec.vocab_size, m.spec.eos_token_ids, slots)
            for name, m in models.items()
            if (m.path / "tokenizer.json").is_file()
        }
        runners = {
            name: ModelRunner(name, m, self.kv_cache, seed=seed, grammars=self.grammars.get(name))
            for name, m in models.items()
        }
        limits = {name: ModelLimits(m.spec.eos_token_ids, m.spec.max_position) for name, m in models.items()}
        super().__init__(
            scheduler, executor, runners, clock, limits=limits, decoders=decoders, grammars=self.grammars
        )

    def close(self) -> None:
        """Stop the executor's worker threads; the engine takes no more steps (idempotent).

        Call it (or use the engine as a context manager) before the process
        exits: on CUDA, worker threads left holding their streams at
        interpreter shutdown abort the process.
        """
        self.executor.shutdown()
        for grammars in self.grammars.values():
            grammars.close()

    def __enter__(self) -> LLMEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def load_engine(
    paths: dict[str, str],
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    **engine_kwargs,
) -> LLMEngine:
    """Load every model of ``paths`` (name -> local dir) and their tokenizers' decoders."""
    from muxd.models.loader import load_model
    from muxd.models.tokenizer import load_tokenizer

    models = {name: load_model(path, dtype, device) for name, path in paths.items()}
    decoders = {name: load_tokenizer(m.path).decode for name, m in models.items()}
    return LLMEngine(models, decoders=decoders, **engine_kwargs)

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
    ``green_contexts`` (CUDA only) runs compute shares in green contexts of
    disjoint SM groups (``engine/green_context.py``); off, every share is a
    plain stream over all SMs. ``decode_graphs`` (``auto``:
    CUDA with the Triton attention) captures each model's decode step per
    batch bucket (``engine/decode_graph.py``).
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
        decode_graphs: str = "auto",
        device: str | None = None,
        kv_heads: list[tuple[int, torch.dtype]] | None = None,
    ) -> None:
        devices = {m.device for m in models.values()}
        if len(devices) > 1:
            raise ValueError(f"all models of one engine share a device, got {sorted(map(str, devices))}")
        if not devices and device is None:
            raise ValueError("an engine needs at least one model, or its device and kv_heads")
        # Pages are as wide as the widest head among these models and ``kv_heads``
        # (models that may be loaded later, with ``add_model``): the width is fixed.
        heads = [(m.spec.head_dim, m.dtype) for m in models.values()] + list(kv_heads or [])
        if not heads:
            raise ValueError("an engine with no model needs kv_heads to size its pool's pages")
        layout = KVLayout.for_models(page_tokens, heads)
        device = devices.pop() if devices else torch.device(device)
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
        self.models = dict(models)
        self._slots = slots
        # Constrained decoding, for the models with a tokenizer.json llguidance can read.
        self.grammars = {name: g for name, m in models.items() if (g := self._grammars(m)) is not None}
        # What a runner is made with, for these models and those added later (``add_model``).
        self._runner_args = {"seed": seed, "decode_graphs": decode_graphs, "max_batch": config.max_batch_seqs}
        runners = {name: ModelRunner(name, m, self.kv_cache, grammars=self.grammars.get(name), **self._runner_args)
                   for name, m in models.items()}  # fmt: skip
        limits = {name: ModelLimits(m.spec.eos_token_ids, m.spec.max_position) for name, m in models.items()}
        super().__init__(
            scheduler, executor, runners, clock, limits=limits, decoders=decoders, grammars=self.grammars
        )

    def add_model(self, name: str, loaded: LoadedModel, decoder: Decode | None = None) -> None:  # type: ignore[override]
        """Serve ``loaded`` as ``name`` from the next step on; call between steps.

        Raises ValueError when its heads do not fit the pool's pages (a model
        wider than the widest the pool was sized for) or its device differs.
        """
        if loaded.device.type != self.kv_cache.storage.device.type:
            raise ValueError(f"model {name!r} is on {loaded.device}, the engine's pool on {self.kv_cache.storage.device}")
        grammars = self._grammars(loaded)
        runner = ModelRunner(name, loaded, self.kv_cache, grammars=grammars, **self._runner_args)
        limits = ModelLimits(loaded.spec.eos_token_ids, loaded.spec.max_position)
        super().add_model(name, runner, loaded.spec.pages_per_block, limits, decoder, grammars)
        self.models[name] = loaded

    def _grammars(self, loaded: LoadedModel) -> Grammars | None:
        """The model's grammar cache (llguidance reads its tokenizer.json); None without one."""
        tokenizer = loaded.path / "tokenizer.json"
        if not tokenizer.is_file():
            return None
        return Grammars(tokenizer, loaded.spec.vocab_size, loaded.spec.eos_token_ids, self._slots)

    def remove_model(self, name: str) -> LoadedModel:
        """Stop serving ``name`` (drained first: ``has_requests(name)`` false); return its model,
        whose memory goes once the caller drops it."""
        grammars = self.grammars.get(name)
        super().remove_model(name)  # raises, serving on, while the model has requests
        if grammars is not None:
            grammars.close()
        return self.models.pop(name)

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

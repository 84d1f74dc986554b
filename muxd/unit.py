"""The unit process: one LLM unit's models, pool and scheduler behind a pipe.

``run_unit`` is the entry point of a spawned process. It loads the unit's
preloaded models, answers ``Ready``, then loops: take every pending message,
hand over models that finished loading, unload drained ones, run one engine
step, send that step's token events as one batch. It blocks on the pipe
only when it has nothing to run, so an idle unit costs no CPU. The front end
owns the process; a crash here ends only this unit.

The model set changes while the unit serves (issue #22): ``LoadModel``
starts a load on its own thread (``models/background.py``) and the model
joins the engine at the next step boundary; ``UnloadModel`` waits until the
model's requests have drained, then removes it and frees its memory. The
pool's pages are sized at start for the widest model the unit may load.
"""

from __future__ import annotations

import logging
from multiprocessing.connection import Connection

import ctypes
import gc
from typing import TYPE_CHECKING

from muxd import ipc
from muxd.config import ModelConfig, UnitConfig
from muxd.core.sequence import SamplingParams
from muxd.engine.llm_engine import LLMEngine, RequestOutput
from muxd.models.background import BackgroundLoads, LoadResult, load_configured

if TYPE_CHECKING:
    import torch

log = logging.getLogger("muxd.unit")

IDLE_POLL_S = 0.5
STALLED_POLL_S = 0.005


def build_engine(config: UnitConfig) -> LLMEngine:
    import torch

    from muxd.sched.base import SchedulerConfig

    if config.threads:
        torch.set_num_threads(config.threads)
    models = {m.name: load_configured(m, config.device)[0] for m in config.models if m.preload}
    return LLMEngine(
        models,
        kv_cache_bytes=config.kv_cache_bytes,
        page_tokens=config.page_tokens,
        policy=config.policy,
        cores=config.threads,
        rates={m.name: m.rate for m in config.models},
        scheduler_config=SchedulerConfig(config.max_batch_seqs, config.max_prefill_tokens),
        prefix_caching=config.prefix_caching,
        green_contexts=config.compute_shares == "auto",
        seed=config.seed,
        device=config.device,
        kv_heads=[h for m in config.models if not m.preload and (h := kv_head(m, config.device))],
    )


def kv_head(model: ModelConfig, device: str) -> tuple[int, torch.dtype] | None:
    """The (head_dim, KV dtype) a model will have once loaded, read from its files' headers;
    None (logged) when they cannot be read: its load will fail and say why."""
    import torch

    from muxd.engine.kernel_plan import plan
    from muxd.library import model_shape

    try:
        head_dim = model_shape(model.path).head_dim
    except (OSError, ValueError) as e:
        log.warning("model %s: %s; the pool's pages are not sized for it", model.name, e)
        return None
    return head_dim, getattr(torch, plan(device, model.dtype, model.quantization).dtype)


class Unit:
    """The message loop around an engine; separate from the process for tests."""

    def __init__(self, config: UnitConfig, engine: LLMEngine, conn: Connection) -> None:
        self.config = config
        self.engine = engine
        self.conn = conn
        self.running = True
        self._sent: dict[str, int] = {}  # request id -> output tokens already sent
        self.configs = {m.name: m for m in config.models}
        self.loads = BackgroundLoads(config.device)
        self.draining: set[str] = set()  # models to unload once their requests have finished
        compute = engine.executor.compute
        if compute.kind == "streams" and config.compute_shares == "auto":  # disjoint SMs asked for, not had
            log.warning("unit %s: compute shares run on plain streams over every SM (%s)", config.name, compute.note)

    def model_info(self, name: str, load_s: float = 0.0) -> ipc.ModelInfo:
        m = self.engine.models[name]
        return ipc.ModelInfo(
            name=name,
            max_position=m.spec.max_position,
            eos_token_ids=m.spec.eos_token_ids,
            weight_bytes=m.weight_bytes,
            dtype=str(m.dtype).removeprefix("torch."),
            device=str(m.device),
            plan=m.plan.label,
            plan_notes=m.plan.reasons,
            source_dir=str(m.path),
            load_s=load_s,
        )

    def ready_message(self) -> ipc.Ready:
        infos = [self.model_info(name) for name in self.engine.models]
        cache = self.engine.kv_cache
        return ipc.Ready(self.config.name, infos, cache.usable_pages, cache.nbytes, self.engine.executor.compute)

    def serve_forever(self) -> None:
        """Serve until the daemon says Shutdown, or is gone (its end of the
        pipe closed: the unit ignores SIGINT and SIGTERM, so this is how a
        unit of a killed daemon ends)."""
        try:
            self._serve()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            log.warning("unit %s: the daemon is gone; stopping", self.config.name)

    def _serve(self) -> None:
        self.conn.send(self.ready_message())
        while self.running:
            busy = self.engine.has_unfinished
            waiting = self.loads.pending or self.draining
            if self.conn.poll(0 if busy else STALLED_POLL_S if waiting else IDLE_POLL_S):
                while self.running and self.conn.poll(0):
                    self.handle(self.conn.recv())
            self.change_models()  # a step boundary: no job of this thread is being launched
            if self.engine.has_unfinished:
                events = [self._event(out) for out in self.engine.step()]
                if events:
                    self.conn.send(events)
                elif not self.engine.executor.busy:
                    self.conn.poll(STALLED_POLL_S)  # nothing could run (e.g. quotas): don't spin

    def handle(self, msg: object) -> None:
        if isinstance(msg, ipc.AddRequest):
            try:
                self.engine.add_request(msg.model, msg.prompt_ids, SamplingParams(**msg.params), msg.request_id)
                self._sent[msg.request_id] = 0
            except (KeyError, ValueError, TypeError) as e:
                error = e.args[0] if e.args else str(e)
                self.conn.send([ipc.TokenEvent(msg.request_id, [], [], True, "error", len(msg.prompt_ids), str(error))])
        elif isinstance(msg, ipc.AbortRequest):
            self.engine.abort(msg.request_id)
        elif isinstance(msg, ipc.LoadModel):
            self.load(msg.model)
        elif isinstance(msg, ipc.UnloadModel):
            if msg.model in self.engine.models or self.loads.loading(msg.model):
                self.draining.add(msg.model)
            else:
                self.conn.send(ipc.ModelUnloaded(msg.model))
        elif isinstance(msg, ipc.StatsRequest):
            self.conn.send(self.engine.snapshot(self.config.name))
        elif isinstance(msg, ipc.Shutdown):
            self.running = False
        else:
            log.error("unit %s ignores an unknown message %r", self.config.name, msg)

    def load(self, name: str) -> None:
        """Start loading ``name`` on its own thread (answered at once if it is loaded already)."""
        self.draining.discard(name)  # asked for again before its unload: it stays
        if name in self.engine.models:
            self.conn.send(ipc.ModelLoaded(self.model_info(name)))
        elif name not in self.configs:
            self.conn.send(ipc.ModelLoadFailed(name, f"model {name!r} is not one of unit {self.config.name}'s models"))
        else:
            self.loads.start(self.configs[name])

    def change_models(self) -> None:
        """Hand finished loads to the engine and unload drained models (between two steps)."""
        for result in self.loads.finished():
            self._hand_over(result)
        for name in [n for n in self.draining if n in self.engine.models and not self.engine.has_requests(n)]:
            self.draining.discard(name)
            model = self.engine.remove_model(name)
            del model
            release_memory()
            log.info("unit %s: unloaded %s", self.config.name, name)
            self.conn.send(ipc.ModelUnloaded(name))

    def _hand_over(self, result: LoadResult) -> None:
        if result.model is None:
            self.draining.discard(result.name)
            self.conn.send(ipc.ModelLoadFailed(result.name, result.error or "unknown error"))
            return
        try:
            self.engine.add_model(result.name, result.model)
        except ValueError as e:
            self.conn.send(ipc.ModelLoadFailed(result.name, str(e)))
            return
        log.info("unit %s: loaded %s in %.2f s", self.config.name, result.name, result.seconds)
        self.conn.send(ipc.ModelLoaded(self.model_info(result.name, result.seconds)))

    def _event(self, out: RequestOutput) -> ipc.TokenEvent:
        sent = self._sent.get(out.request_id, 0)
        if out.finished:
            self._sent.pop(out.request_id, None)
        else:
            self._sent[out.request_id] = len(out.output_ids)
        return ipc.TokenEvent(
            out.request_id,
            out.output_ids[sent:],
            out.logprobs[sent:],
            out.finished,
            out.finish_reason,
            len(out.prompt_ids),
            out.error,
        )


def release_memory() -> None:
    """Give an unloaded model's memory back to the system now.

    Its tensors go by reference counting as the engine drops it; a young-generation
    collection catches small cycles (0.5 ms, where a full collection of a process
    holding torch and transformers takes about 0.25 s, a stall of every stream).
    """
    import torch

    gc.collect(1)
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_unit(config: UnitConfig, conn: Connection) -> None:
    """Process entry point (``multiprocessing`` spawn target)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s unit[{config.name}] %(message)s")
    try:
        engine = build_engine(config)
    except Exception as e:  # a model that fails to load: tell the front end, then exit
        conn.send(ipc.StartFailed(config.name, f"{type(e).__name__}: {e}"))
        raise
    with engine:
        Unit(config, engine, conn).serve_forever()

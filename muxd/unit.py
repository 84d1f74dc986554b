"""The unit process: one LLM unit's models, pool and scheduler behind a pipe.

``run_unit`` is the entry point of a spawned process. It loads the unit's
models, answers ``Ready``, then loops: take every pending message, run one
engine step, send that step's token events as one batch. It blocks on the
pipe only when it has nothing to run, so an idle unit costs no CPU. The
front end owns the process; a crash here ends only this unit.
"""

from __future__ import annotations

import logging
from multiprocessing.connection import Connection

from muxd import ipc
from muxd.config import UnitConfig
from muxd.core.sequence import SamplingParams
from muxd.engine.llm_engine import LLMEngine, RequestOutput

log = logging.getLogger("muxd.unit")

IDLE_POLL_S = 0.5
STALLED_POLL_S = 0.005


def build_engine(config: UnitConfig) -> LLMEngine:
    import torch

    from muxd.models.loader import load_model
    from muxd.sched.base import SchedulerConfig

    if config.threads:
        torch.set_num_threads(config.threads)
    models = {
        m.name: load_model(m.path, m.dtype, config.device, quantization=m.quantization) for m in config.models
    }
    return LLMEngine(
        models,
        kv_cache_bytes=config.kv_cache_bytes,
        page_tokens=config.page_tokens,
        policy=config.policy,
        cores=config.threads,
        rates={m.name: m.rate for m in config.models},
        scheduler_config=SchedulerConfig(config.max_batch_seqs, config.max_prefill_tokens),
        prefix_caching=config.prefix_caching,
        seed=config.seed,
    )


class Unit:
    """The message loop around an engine; separate from the process for tests."""

    def __init__(self, config: UnitConfig, engine: LLMEngine, conn: Connection) -> None:
        self.config = config
        self.engine = engine
        self.conn = conn
        self.running = True
        self._sent: dict[str, int] = {}  # request id -> output tokens already sent

    def ready_message(self) -> ipc.Ready:
        infos = [
            ipc.ModelInfo(
                name=name,
                max_position=m.spec.max_position,
                eos_token_ids=m.spec.eos_token_ids,
                weight_bytes=m.weight_bytes,
                dtype=str(m.dtype).removeprefix("torch."),
                device=str(m.device),
                plan=m.plan.label,
                plan_notes=m.plan.reasons,
            )
            for name, m in self.engine.models.items()
        ]
        cache = self.engine.kv_cache
        return ipc.Ready(self.config.name, infos, cache.usable_pages, cache.nbytes)

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
            if self.conn.poll(0 if busy else IDLE_POLL_S):
                while self.running and self.conn.poll(0):
                    self.handle(self.conn.recv())
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
        elif isinstance(msg, ipc.StatsRequest):
            self.conn.send(self.engine.snapshot(self.config.name))
        elif isinstance(msg, ipc.Shutdown):
            self.running = False
        else:
            log.error("unit %s ignores an unknown message %r", self.config.name, msg)

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

"""One model's executor: turn a ``Job`` into one forward pass and sampled tokens.

A runner owns its model's weights and a typed view of the unit's KV pool;
prefill and decode jobs of that model both go through ``run``, so the
weights are loaded once and shared by both kinds of work.
"""

from __future__ import annotations

import logging
import time
import weakref
from array import array

import torch

from muxd.core.job import Job, JobKind, JobResult
from muxd.core.sequence import Sequence
from muxd.engine.attention import AttentionMetadata, triton_decode
from muxd.engine.decode_graph import DecodeGraphs
from muxd.engine.decode_rows import DecodeRow
from muxd.engine.grammar import Grammars
from muxd.engine.kv_cache import KVCache
from muxd.engine.sampler import sample
from muxd.engine.model import Logits
from muxd.models.loader import LoadedModel

log = logging.getLogger(__name__)


class ModelRunner:
    """Runs one job at a time for one model (callers serialise per runner)."""

    def __init__(self, name: str, loaded: LoadedModel, kv_cache: KVCache, seed: int = 0,
                 grammars: Grammars | None = None, *, decode_graphs: str = "auto", max_batch: int = 64) -> None:
        self.name = name
        self.grammars = grammars  # constrained decoding (engine/grammar.py); None: the model takes no grammar
        self.loaded = loaded
        self.spec = loaded.spec
        self.device = loaded.device
        self.page_tokens = kv_cache.layout.page_tokens
        self.kv = kv_cache.view(loaded.dtype, loaded.spec.head_dim)
        self.null_page = kv_cache.null_page
        self._seeder = torch.Generator().manual_seed(seed)
        # A sampling generator per live sequence; dropped with the sequence.
        self._generators: weakref.WeakKeyDictionary[Sequence, torch.Generator] = weakref.WeakKeyDictionary()
        self.graphs = self._decode_graphs(decode_graphs, max_batch, kv_cache.usable_pages)

    def _decode_graphs(self, mode: str, max_batch: int, pool_pages: int) -> DecodeGraphs | None:
        """Decode steps as CUDA graphs (``decode_graph.py``): ``auto`` on CUDA where attention takes the
        Triton kernels, ``eager`` their fixed buffers without capture (tests), ``off`` none. A capture
        that fails is logged and the step runs uncaptured."""
        if mode not in ("auto", "eager", "off"):
            raise ValueError(f"decode_graphs {mode!r} is not one of auto, eager, off")
        if mode == "off" or (mode == "auto" and not (self.device.type == "cuda" and triton_decode(self.device))):
            return None
        spec = self.spec
        # As wide as the longest table a sequence can have: its context, at most 32k tokens, and what the pool holds.
        context_blocks = -(-min(spec.max_position or 8192, 32768) // self.page_tokens)
        max_blocks = max(1, min(context_blocks, pool_pages // spec.pages_per_block))
        try:
            return DecodeGraphs(self._logits, max_batch=max_batch, max_blocks=max_blocks, layers=spec.num_layers,
                                kv_heads=spec.num_kv_heads, page_tokens=self.page_tokens, null_page=self.null_page,
                                device=self.device, kv=self.kv, capture=mode == "auto")  # fmt: skip
        except Exception as e:  # noqa: BLE001 - any capture error: serve uncaptured
            log.error("%s: decode graphs not captured (%s): steps run uncaptured", self.name, e)
            return None

    @torch.inference_mode()
    def _logits(self, token_ids: torch.Tensor, meta: AttentionMetadata, rows: torch.Tensor) -> torch.Tensor:
        return self.loaded.model(token_ids, meta, self.kv, rows).values

    @torch.inference_mode()
    def run(self, job: Job) -> JobResult:
        t0 = time.perf_counter()
        logits = self._graph_step(job)
        if logits is None:
            logits = self._forward(job)
        sampled = [c.seq for c in job.chunks if c.samples]
        result = JobResult(job)
        if sampled:
            gens = [self._generator(s) for s in sampled]
            tokens, logprobs = sample(
                logits.values, [s.params for s in sampled], gens, logits.argmax_lse, self._allowed(sampled)
            )
            for seq, tok, lp in zip(sampled, tokens.tolist(), logprobs.tolist()):
                result.tokens[seq.seq_id] = tok
                result.logprobs[seq.seq_id] = lp
        result.duration_s = time.perf_counter() - t0
        return result

    def _graph_step(self, job: Job) -> Logits | None:
        """A decode job through the graphs' persistent rows (no ``_prepare``), or None where they do
        not take it: no graphs, the Triton kernels failed since, a chunk that is not one sampling token."""
        if self.graphs is None or job.kind is not JobKind.DECODE or not triton_decode(self.device):
            return None
        rows = [_decode_row(c.seq, c.start) for c in job.chunks if c.end - c.start == 1 and c.samples]
        if len(rows) != len(job.chunks):
            return None
        try:
            return self.graphs.run(rows)
        except Exception as e:  # noqa: BLE001 - a kernel that fails here: this and later steps run uncaptured
            log.error("%s: a decode step through the graphs failed (%s): steps run uncaptured from now on", self.name, e)
            self.graphs = None
            return None

    def _forward(self, job: Job) -> Logits:
        token_ids, meta, sample_rows = self._prepare(job)
        # A CPU decode job runs on one intra-op thread (see engine/executor.py)
        # but its matmuls use every slot the job holds.
        matmul_threads = job.slots if job.kind is JobKind.DECODE and self.device.type == "cpu" else 0
        return self.loaded.model(token_ids, meta, self.kv, sample_rows, matmul_threads)

    def _allowed(self, sampled: list[Sequence]) -> tuple[list[int], torch.Tensor] | None:
        """The constrained rows of a step and the tokens their grammars allow next."""
        rows = [i for i, s in enumerate(sampled) if s.params.grammar]
        if not rows or self.grammars is None:
            return None
        return rows, self.grammars.allowed([sampled[i] for i in rows])

    def _prepare(self, job: Job) -> tuple[torch.Tensor, AttentionMetadata, torch.Tensor]:
        """Flat token ids ``[N]``, attention metadata and the rows to sample."""
        spec, P = self.spec, self.page_tokens
        block = spec.pages_per_block
        ids: list[int] = []
        rows: list[int] = []
        tables = array("q")  # [B, max_blocks * block] page ids, filled below; to a tensor without a per-int conversion
        fresh: list[int] = []  # pages of blocks this job writes first: zeroed before use
        max_blocks = max(-(-c.end // P) for c in job.chunks)
        for c in job.chunks:
            seq = c.seq
            ids.extend(seq.token_ids[c.start : c.end])
            if c.samples:
                rows.append(len(ids) - 1)
            pages = seq.pages[: -(-c.end // P) * block]
            fresh.extend(pages[-(-c.start // P) * block :])
            tables.extend(pages)
            tables.extend([self.null_page] * (max_blocks * block - len(pages)))
        if fresh:
            index = torch.tensor(fresh, dtype=torch.int64, device=self.device)
            self.kv[0][index] = 0
            self.kv[1][index] = 0
        block_tables = torch.frombuffer(tables, dtype=torch.int64).to(self.device).view(
            len(job.chunks), max_blocks, spec.num_layers, spec.num_kv_heads
        )
        meta = AttentionMetadata.build(
            [c.start for c in job.chunks],
            [c.end for c in job.chunks],
            block_tables,
            P,
        )
        token_ids = torch.tensor(ids, dtype=torch.int64, device=self.device)
        return token_ids, meta, torch.tensor(rows, dtype=torch.int64, device=self.device)

    def _generator(self, seq: Sequence) -> torch.Generator:
        gen = self._generators.get(seq)
        if gen is None:
            seed = seq.params.seed
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,), generator=self._seeder))
            gen = torch.Generator(device=self.device).manual_seed(seed)
            self._generators[seq] = gen
        return gen


def _decode_row(seq: Sequence, position: int) -> DecodeRow:
    """``seq``'s decode step at ``position`` as the graphs take it (no copy of its token list)."""
    prompt = len(seq.prompt_ids)
    token = seq.prompt_ids[position] if position < prompt else seq.output_ids[position - prompt]
    return DecodeRow(seq.seq_id, seq.num_preemptions, token, position, seq.pages)

"""Decode graphs' persistent rows: what a step writes, and that the tables always read right.

The unit tests drive ``DecodeGraphs`` without capture on fake pages and a
fake forward (its logits peak at each row's token, so the output order is
visible); the engine tests run tiny models through the rows with the
Triton kernels under ``TRITON_INTERPRET=1`` while the batch changes.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the kernels run in Python

from muxd.engine.decode_graph import DecodeGraphs  # noqa: E402
from muxd.engine.decode_rows import DecodeRow  # noqa: E402

LAYERS, KV_HEADS, PAGE_TOKENS, MAX_BLOCKS, NULL, VOCAB = 2, 2, 4, 6, 999, 64
PPB = LAYERS * KV_HEADS  # pages per block


class FakeForward:
    """Logits whose row ``r`` peaks at ``ids[r]``, and a copy of the metadata each step saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # tables, lengths, slots

    def __call__(self, ids, meta, rows) -> torch.Tensor:
        self.seen.append((meta.block_tables.clone(), meta.lengths.clone(), meta.slot_mapping.clone()))
        noise = torch.sin(torch.arange(VOCAB, dtype=torch.float32)[None, :] * (rows[:, None] + 1))
        return noise + 10 * torch.nn.functional.one_hot(ids, VOCAB).float()


def make_graphs(max_batch: int = 4, kv=None) -> tuple[DecodeGraphs, FakeForward]:
    forward = FakeForward()
    graphs = DecodeGraphs(forward, max_batch=max_batch, max_blocks=MAX_BLOCKS, layers=LAYERS, kv_heads=KV_HEADS,
                          page_tokens=PAGE_TOKENS, null_page=NULL, device=torch.device("cpu"), kv=kv,
                          capture=False)  # fmt: skip
    return graphs, forward


def row(seq_id: str, position: int, pages: list[int], epoch: int = 0) -> DecodeRow:
    return DecodeRow(seq_id, epoch, token=(position * 7 + len(seq_id)) % VOCAB, position=position, pages=pages)


def expected_table(pages: list[int]) -> torch.Tensor:
    """``[M, L, Hkv]``: the table ``_prepare`` would build, padded with the null page."""
    flat = pages + [NULL] * (MAX_BLOCKS * PPB - len(pages))
    return torch.tensor(flat).view(MAX_BLOCKS, LAYERS, KV_HEADS)


def assert_forward_saw(graphs: DecodeGraphs, forward: FakeForward, rows: list[DecodeRow]) -> None:
    """The last step's metadata: each row's whole table, length and slots, padding rows inert."""
    tables, lengths, slots = forward.seen[-1]
    for r in rows:
        i = graphs.live.index[r.seq_id]
        assert torch.equal(tables[i], expected_table(r.pages)), r.seq_id
        assert lengths[i] == r.position + 1
        page = expected_table(r.pages)[r.position // PAGE_TOKENS]  # [L, Hkv]
        assert torch.equal(slots[:, i], page * PAGE_TOKENS + r.position % PAGE_TOKENS)
    for i in range(len(rows), tables.shape[0]):  # padding rows: the null page, length 1, writing nothing
        assert (tables[i] == NULL).all() and lengths[i] == 1 and (slots[:, i] == -1).all()
    assert (graphs.tables[len(rows):] == NULL).all()  # every row past the live ones, not only the bucket's


def test_a_step_where_no_sequence_gains_a_block_writes_no_table_entry():
    graphs, forward = make_graphs()
    a, b = list(range(0, 4)), list(range(4, 12))  # one block, two blocks
    graphs.run([row("a", 1, a), row("b", 5, b)])
    assert graphs.table_entries_written == 3 * PPB  # the new rows' whole tables, once
    graphs.run([row("a", 2, a), row("b", 6, b)])
    graphs.run([row("b", 7, b), row("a", 3, a)])  # another order: the rows stay
    assert graphs.table_entries_written == 3 * PPB
    assert_forward_saw(graphs, forward, [row("b", 7, b), row("a", 3, a)])


def test_a_step_after_a_page_boundary_writes_exactly_the_new_blocks_entries():
    graphs, forward = make_graphs()
    a, b = list(range(0, 4)), list(range(4, 12))
    graphs.run([row("a", 3, a), row("b", 5, b)])
    before = graphs.table_entries_written
    a.extend(range(20, 24))  # a's token at position 4 starts its second block
    rows = [row("a", 4, a), row("b", 6, b)]
    graphs.run(rows)
    assert graphs.table_entries_written - before == PPB
    assert torch.equal(graphs.tables[graphs.live.index["a"], 1], torch.tensor([[20, 21], [22, 23]]))
    assert_forward_saw(graphs, forward, rows)


def test_blocks_gained_while_steps_ran_uncaptured_are_all_written():
    graphs, forward = make_graphs(max_batch=2)
    a = list(range(0, 4))
    graphs.run([row("a", 3, a)])
    a.extend(range(4, 12))  # two blocks gained over steps a batch too large for the graphs ran
    before = graphs.table_entries_written
    graphs.run([row("a", 9, a)])
    assert graphs.table_entries_written - before == 2 * PPB
    assert_forward_saw(graphs, forward, [row("a", 9, a)])


def test_a_readmitted_sequence_gets_its_table_rewritten():
    graphs, forward = make_graphs()
    graphs.run([row("a", 5, list(range(0, 8))), row("b", 1, list(range(8, 12)))])
    before = graphs.table_entries_written
    readmitted = list(range(0, 4)) + list(range(40, 44))  # the first block from the prefix cache, the second new
    rows = [row("a", 6, readmitted, epoch=1), row("b", 2, list(range(8, 12)))]
    graphs.run(rows)
    assert graphs.table_entries_written - before == 2 * PPB
    assert_forward_saw(graphs, forward, rows)


def test_a_sequence_absent_for_a_step_rejoins_with_its_whole_table():
    graphs, forward = make_graphs()
    a, b = list(range(0, 4)), list(range(4, 8))
    graphs.run([row("a", 1, a), row("b", 1, b)])
    graphs.run([row("b", 2, b)])
    before = graphs.table_entries_written
    graphs.run([row("b", 3, b), row("a", 2, a)])
    assert graphs.table_entries_written - before == PPB
    assert_forward_saw(graphs, forward, [row("b", 3, b), row("a", 2, a)])


def test_logits_argmax_and_lse_come_back_in_the_jobs_order():
    graphs, _ = make_graphs()
    graphs.run([row(s, 1, list(range(4 * i, 4 * i + 4))) for i, s in enumerate("abc")])
    rows = [row(s, 2, list(range(4 * i, 4 * i + 4))) for i, s in reversed(list(enumerate("abc")))]
    logits = graphs.run(rows)
    assert logits.values.shape == (3, VOCAB)
    argmax, lse = logits.argmax_lse
    assert argmax.tolist() == [r.token for r in rows]
    assert torch.equal(argmax, torch.argmax(logits.values, dim=-1))
    torch.testing.assert_close(lse, torch.logsumexp(logits.values, dim=-1))


def test_the_rows_stay_right_while_sequences_join_grow_leave_and_return():
    """Random steps: sequences join, leave, gain blocks, are re-admitted with new pages, in any
    order, the batch crossing buckets; every step the forward sees the tables ``_prepare`` builds."""
    graphs, forward = make_graphs(max_batch=8)
    rng = random.Random(0)
    free = list(range(600))
    rng.shuffle(free)
    live: dict[str, tuple[int, int, list[int]]] = {}  # seq_id -> epoch, position, pages
    for step in range(120):
        if len(live) < 8 and rng.random() < 0.4:
            live[f"s{step}"] = (0, rng.randrange(0, 12), [])
        for seq_id in [s for s in live if rng.random() < 0.08]:
            epoch, position, pages = live.pop(seq_id)
            if rng.random() < 0.5:  # preempted and re-admitted: its first block cached, the rest on other pages
                live[seq_id] = (epoch + 1, position, pages[:PPB])
                pages = pages[PPB:]
            free[:0] = pages  # reused last, so a re-admitted sequence gets other pages
        rows = []
        for seq_id, (epoch, position, pages) in list(live.items()):
            position += 1
            while len(pages) < (position // PAGE_TOKENS + 1) * PPB:
                pages.extend(free.pop() for _ in range(PPB))
            if position >= MAX_BLOCKS * PAGE_TOKENS - 1:  # the longest a table holds: it finishes
                free[:0] = live.pop(seq_id)[2]
                continue
            live[seq_id] = (epoch, position, pages)
            rows.append(row(seq_id, position, pages, epoch))
        rng.shuffle(rows)
        logits = graphs.run(rows)
        if rows:
            assert logits.argmax_lse[0].tolist() == [r.token for r in rows]
            assert_forward_saw(graphs, forward, rows)
    assert graphs.live.rows_moved > 0


def test_the_block_a_step_starts_is_zeroed_before_use():
    k, v = torch.ones(64, PAGE_TOKENS, 8), torch.ones(64, PAGE_TOKENS, 8)
    graphs, _ = make_graphs(kv=(k, v))
    graphs.run([row("a", 3, list(range(0, 4)))])
    assert bool((k == 1).all())  # mid-block: nothing zeroed
    graphs.run([row("a", 4, list(range(0, 8)))])
    zeroed = [p for p in range(64) if not k[p].any() and not v[p].any()]
    assert zeroed == [4, 5, 6, 7]


def test_staging_hands_back_each_part_from_one_buffer():
    from array import array

    from muxd.engine.decode_graph import Staging

    staging = Staging(torch.device("cpu"))
    parts = [array("q", [1, 2]), array("q"), array("q", range(10, 15))]
    got = staging.copy(parts)
    assert [t.tolist() for t in got] == [[1, 2], [], [10, 11, 12, 13, 14]]
    assert all(t.untyped_storage().data_ptr() == staging.dev.untyped_storage().data_ptr() for t in got)
    assert not staging.pinned  # pinned only where CUDA is


def test_a_batch_larger_than_every_bucket_or_a_table_too_wide_is_left_to_the_caller():
    graphs, _ = make_graphs(max_batch=2)
    assert graphs.run([row(s, 1, list(range(4))) for s in "abc"]) is None
    assert graphs.run([row("a", 1, list(range((MAX_BLOCKS + 1) * PPB)))]) is None
    assert graphs.table_entries_written == 0 and not graphs.live.index


@pytest.mark.parametrize("graph_batch", [4, 2])
def test_greedy_tokens_equal_transformers_while_the_batch_changes(graph_batch, tiny_model_dirs, monkeypatch):
    """Requests join between steps and finish at different lengths; the decode batch grows past a
    bucket and shrinks. ``graph_batch=2``: batches of 3 and 4 run uncaptured, the rest through the
    rows, which must then catch up with the blocks gained meanwhile."""
    pytest.importorskip("triton")
    from muxd.core.sequence import SamplingParams
    from muxd.engine.attention import DECODE_ATTENTION_ENV, triton_failed
    from muxd.engine.llm_engine import LLMEngine
    from muxd.models.loader import load_model
    from muxd.sched.base import SchedulerConfig

    from .conftest import assert_pool_whole, hf_greedy

    monkeypatch.setenv(DECODE_ATTENTION_ENV, "triton")
    path = tiny_model_dirs["llama"]
    engine = LLMEngine({"m": load_model(path, device="cpu")}, kv_cache_bytes=4 << 20, page_tokens=4,
                       decode_graphs="eager", scheduler_config=SchedulerConfig(max_batch_seqs=4))  # fmt: skip
    runner = engine.runners["m"]
    if graph_batch != 4:
        runner.graphs = runner._decode_graphs("eager", graph_batch, engine.kv_cache.usable_pages)
    prompts = [[5, 17, 99, 3, 42, 8], list(range(30, 45)), [7], [11, 12, 13], list(range(60, 69)), [2, 4]]
    lengths = [9, 3, 7, 5, 2, 8]
    ids, outputs = {}, {}
    for i, (prompt, n) in enumerate(zip(prompts, lengths)):  # one request joins every other step
        ids[i] = engine.add_request("m", prompt, SamplingParams(max_tokens=n, ignore_eos=True))
        for _ in range(2):
            outputs.update({o.request_id: o for o in engine.step() if o.finished})
    while engine.has_unfinished:
        outputs.update({o.request_id: o for o in engine.step() if o.finished})
    assert not triton_failed()
    for i, (prompt, n) in enumerate(zip(prompts, lengths)):
        assert outputs[ids[i]].output_ids == hf_greedy(path, prompt, n), f"request {i}"
    assert runner.graphs.table_entries_written > 0  # the rows took steps
    assert graph_batch != 4 or runner.graphs.live.rows_moved > 0  # and sequences left from between others
    assert_pool_whole(engine)


def test_a_decode_step_through_the_rows_builds_no_mask_and_no_whole_table(tiny_model_dirs, monkeypatch):
    """The runner's graph route skips ``_prepare``; the model reads the static metadata and builds
    no mask; its argmax and log-sum-exp are those of its logits."""
    pytest.importorskip("triton")
    from muxd.core.job import JobKind
    from muxd.core.sequence import SamplingParams
    from muxd.engine.attention import DECODE_ATTENTION_ENV, AttentionMetadata
    from muxd.engine.llm_engine import LLMEngine
    from muxd.models.loader import load_model

    monkeypatch.setenv(DECODE_ATTENTION_ENV, "triton")
    engine = LLMEngine({"m": load_model(tiny_model_dirs["qwen3"], device="cpu")}, kv_cache_bytes=4 << 20,
                       page_tokens=4, decode_graphs="eager")  # fmt: skip
    runner = engine.runners["m"]
    prepared, metas, steps = [], [], []
    prepare, static, run = runner._prepare, AttentionMetadata.static, runner.graphs.run
    monkeypatch.setattr(runner, "_prepare", lambda job: (prepared.append(job.kind), prepare(job))[1])
    monkeypatch.setattr(AttentionMetadata, "static", lambda *a: (m := static(*a), metas.append(m))[0])
    monkeypatch.setattr(runner.graphs, "run", lambda rows: (out := run(rows), steps.append(out))[0])
    engine.generate("m", [[5, 17, 99, 3], [7, 8]], SamplingParams(max_tokens=6, ignore_eos=True))
    assert steps and JobKind.DECODE not in prepared
    assert metas and not any(m._masks or m._decode_masks for m in metas)
    for logits in steps:
        argmax, lse = logits.argmax_lse
        assert torch.equal(argmax, torch.argmax(logits.values, dim=-1))
        torch.testing.assert_close(lse, torch.logsumexp(logits.values, dim=-1))


def test_preempted_sequences_decode_the_same_tokens_through_the_rows(tiny_model_dirs, monkeypatch):
    """A pool too small for every sequence preempts some; re-admitted, their pages differ and their
    rows are rewritten: the tokens equal those of a pool large enough for all."""
    pytest.importorskip("triton")
    from muxd.core.sequence import SamplingParams
    from muxd.engine.attention import DECODE_ATTENTION_ENV
    from muxd.engine.llm_engine import LLMEngine
    from muxd.models.loader import load_model

    monkeypatch.setenv(DECODE_ATTENTION_ENV, "triton")
    models = {"m": load_model(tiny_model_dirs["llama"], device="cpu")}
    prompts = [list(range(3, 3 + n)) for n in (5, 9, 14, 3)]
    params = SamplingParams(max_tokens=12, ignore_eos=True)

    def run(kv_cache_bytes: int) -> tuple[list[list[int]], int]:
        engine = LLMEngine(models, kv_cache_bytes=kv_cache_bytes, page_tokens=4, decode_graphs="eager")
        outputs = [o.output_ids for o in engine.generate("m", prompts, params)]
        return outputs, engine.scheduler.num_preemptions

    large, _ = run(4 << 20)
    small, preemptions = run(40 << 10)  # 39 pages: every sequence fits alone, not all at once
    assert preemptions > 0
    assert small == large


def test_a_step_that_fails_in_the_graphs_runs_uncaptured_and_so_do_the_next(tiny_model_dirs, monkeypatch):
    """A kernel failing inside the graphs' step loses no request: that step and every later one run
    through the uncaptured forward, and the tokens are the same."""
    pytest.importorskip("triton")
    from muxd.core.sequence import SamplingParams
    from muxd.engine.attention import DECODE_ATTENTION_ENV
    from muxd.engine.llm_engine import LLMEngine
    from muxd.models.loader import load_model

    from .conftest import hf_greedy

    monkeypatch.setenv(DECODE_ATTENTION_ENV, "triton")
    path = tiny_model_dirs["llama"]
    engine = LLMEngine({"m": load_model(path, device="cpu")}, kv_cache_bytes=4 << 20, page_tokens=4,
                       decode_graphs="eager")  # fmt: skip
    runner, steps = engine.runners["m"], []
    run = runner.graphs.run

    def fails_on_the_third(rows):
        steps.append(len(rows))
        if len(steps) == 3:
            raise RuntimeError("an illegal memory access")
        return run(rows)

    monkeypatch.setattr(runner.graphs, "run", fails_on_the_third)
    prompt = [5, 17, 99, 3, 42]
    out = engine.generate("m", [prompt], SamplingParams(max_tokens=8, ignore_eos=True))[0]
    assert len(steps) == 3 and runner.graphs is None
    assert out.output_ids == hf_greedy(path, prompt, 8)


def test_the_graphs_tables_are_no_wider_than_the_pool_can_fill(tiny_model_dirs):
    """A table row holds at most the blocks the pool has: a small pool makes narrow buffers."""
    from muxd.engine.llm_engine import LLMEngine
    from muxd.models.loader import load_model

    engine = LLMEngine({"m": load_model(tiny_model_dirs["llama"], device="cpu")}, kv_cache_bytes=64 << 10,
                       page_tokens=4, decode_graphs="eager")  # fmt: skip
    runner = engine.runners["m"]
    pool_blocks = engine.kv_cache.usable_pages // runner.spec.pages_per_block
    assert pool_blocks < -(-runner.spec.max_position // 4)  # the pool, not the context, is the bound here
    assert runner.graphs.max_blocks == pool_blocks

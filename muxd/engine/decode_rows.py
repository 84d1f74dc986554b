"""Which row of a model's decode-graph buffers each live sequence holds, and what a step must write.

Like vLLM v1's persistent input batch: a sequence keeps its row of the
fixed buffers (``decode_graph.py``) from one decode step to the next, so a
step writes only what changed. A staying sequence writes the table entries
of the blocks it gained since its last step (one block every
``page_tokens`` steps, ``layers x kv_heads`` entries); a sequence new to the
batch writes its whole table once; a sequence that left frees its row, and
the last live row moves into the hole (one device row copy), so live rows
stay ``0..n-1``.

A row is the same sequence's only while its ``epoch`` (preemptions so
far) is unchanged: a preempted, re-admitted sequence holds new pages, so it
leaves its row and joins anew. Pages otherwise only grow while a sequence
lives (``core/kv_manager.py``), which is what makes the incremental table
correct. Host bookkeeping only: no torch here.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class DecodeRow:
    """One sequence's decode step as the graphs take it."""

    seq_id: str
    epoch: int  # the sequence's preemptions so far: a new epoch means new pages
    token: int  # the token whose K/V this step computes
    position: int  # its position
    pages: list[int]  # every page the sequence holds, block after block (its own list, not copied)


@dataclass
class StepPlan:
    """What one step writes into the buffers; every field flat int64, ready for the staging copy."""

    order: array  # [n] buffer row of each job row, in the job's order
    holes: array  # rows departed sequences left below the new live count ...
    movers: array  # ... and the live row moved into each
    vacated: tuple[int, int]  # rows [lo, hi) no longer live: reset to the null page
    dst: array  # flat index into the tables ``[B * M * L * Hkv]`` of each entry written
    pages: array  # the page written there
    fresh: array  # pages of the blocks this step starts: zeroed before use, as the runner's ``_prepare`` does


@dataclass
class _Held:
    seq_id: str
    epoch: int
    blocks: int  # blocks of its table written so far


@dataclass
class Rows:
    """The live rows. Invariant: rows ``0..n-1`` are live, row ``r``'s table holds the first
    ``held[r].blocks`` blocks of its sequence and the null page after them, rows ``≥ n`` the
    null page only (the caller applies each ``StepPlan`` before the next ``plan``)."""

    max_blocks: int
    pages_per_block: int
    page_tokens: int
    held: list[_Held] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    entries_written: int = 0  # table entries written so far (tests read it)
    rows_moved: int = 0

    def fits(self, rows: list[DecodeRow]) -> bool:
        """Whether every sequence's table fits the buffers' width."""
        return all(len(r.pages) <= self.max_blocks * self.pages_per_block for r in rows)

    def plan(self, rows: list[DecodeRow]) -> StepPlan:
        """Assign ``rows`` their buffer rows (departures freed, arrivals placed) and list the writes."""
        holes, movers, vacated = self._release(rows)
        plan = StepPlan(array("q"), holes, movers, vacated, array("q"), array("q"), array("q"))
        for r in rows:
            row = self.index.get(r.seq_id)
            if row is None:
                row = self.index[r.seq_id] = len(self.held)
                self.held.append(_Held(r.seq_id, r.epoch, 0))
            plan.order.append(row)
            self._write_new_blocks(row, r, plan)
        return plan

    def _release(self, rows: list[DecodeRow]) -> tuple[array, array, tuple[int, int]]:
        """Free the rows of sequences absent from ``rows`` or re-admitted since (a new epoch, fewer
        pages), then fill each hole below the new live count with the last live row."""
        now = {r.seq_id: r for r in rows}
        gone = {i for i, h in enumerate(self.held) if not self._stays(h, now.get(h.seq_id))}
        before, after = len(self.held), len(self.held) - len(gone)
        holes = array("q", sorted(i for i in gone if i < after))
        movers = array("q", [i for i in range(after, before) if i not in gone])  # as many as holes
        for i in gone:
            del self.index[self.held[i].seq_id]
        for hole, mover in zip(holes, movers):
            self.held[hole] = self.held[mover]
            self.index[self.held[hole].seq_id] = hole
        del self.held[after:]
        self.rows_moved += len(movers)
        return holes, movers, (after, before)

    def _stays(self, held: _Held, now: DecodeRow | None) -> bool:
        return now is not None and now.epoch == held.epoch and len(now.pages) >= held.blocks * self.pages_per_block

    def _write_new_blocks(self, row: int, r: DecodeRow, plan: StepPlan) -> None:
        """Entries of the blocks ``r`` gained since its row last wrote (all of them for a new row),
        and the pages of the block its token starts, if it starts one."""
        ppb, held = self.pages_per_block, self.held[row]
        blocks = len(r.pages) // ppb
        if blocks > held.blocks:
            base = row * self.max_blocks * ppb
            plan.dst.extend(range(base + held.blocks * ppb, base + blocks * ppb))
            plan.pages.extend(r.pages[held.blocks * ppb : blocks * ppb])
            self.entries_written += (blocks - held.blocks) * ppb
            held.blocks = blocks
        if r.position % self.page_tokens == 0:
            block = r.position // self.page_tokens
            plan.fresh.extend(r.pages[block * ppb : (block + 1) * ppb])

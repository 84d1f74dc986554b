"""``muxd bench constrained``: what constrained decoding adds to a decode step.

One engine, one batch of the same prompts, three kinds of run taken in
turns for ``repeats`` rounds: every sequence free, every sequence
constrained by a JSON grammar, and half of each. The figure of merit is the
median decode step of the constrained run over the free one's, measured in
the same process minutes apart (other work on a shared machine moves both).
The grammar is an open JSON array of objects (strings, bounded integers,
enums, booleans) that never closes, so every constrained sequence stays
constrained for all ``max_tokens`` steps and the batch never shrinks; the
time of the masks alone (llguidance's fill and the unpacking) is reported
beside the step.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ITEM_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "Berlin", "Rome", "Madrid"]},
        "member": {"type": "boolean"},
    },
    "required": ["name", "age", "city", "member"],
    "additionalProperties": False,
}
KINDS = ("free", "constrained", "mixed")


def endless_json_grammar() -> str:
    """An llguidance grammar: ``[`` then objects of ``ITEM_SCHEMA`` separated by commas, never closed."""
    import llguidance

    body = json.dumps({**ITEM_SCHEMA, "x-guidance": {"whitespace_flexible": False}})
    return llguidance.LLMatcher.grammar_from_lark(f'start: "[" item ("," item)*\nitem: %json {body}\n')


def run_constrained_bench(
    model_path: str | Path,
    batch: int = 16,
    prompt_len: int = 64,
    max_tokens: int = 64,
    quantization: str = "auto",
    dtype: str = "float32",
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Median decode step of each kind of run (best round each) and the constrained/free ratio."""
    from muxd.bench.engine import bench_prompts
    from muxd.core.sequence import SamplingParams
    from muxd.engine import cpu_isa
    from muxd.engine.llm_engine import LLMEngine
    from muxd.models.loader import load_model
    from muxd.models.tokenizer import load_tokenizer

    if min(batch, prompt_len, max_tokens, repeats) < 1:
        raise ValueError("batch, prompt tokens, max tokens and repeats must be >= 1")
    say = progress or (lambda _msg: None)
    say(f"loading {model_path}")
    loaded = load_model(model_path, dtype, quantization=quantization)
    prompts = bench_prompts(load_tokenizer(loaded.path).encode, batch, prompt_len)
    grammar = endless_json_grammar()
    free = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    bound = SamplingParams(max_tokens=max_tokens, ignore_eos=True, grammar=grammar)
    params = {"free": [free] * batch, "constrained": [bound] * batch, "mixed": [bound, free] * (batch // 2) + [bound] * (batch % 2)}

    with LLMEngine({"bench": loaded}, kv_cache_bytes=256 << 20, prefix_caching=False) as engine:
        grammars = engine.grammars["bench"]
        mask_s: list[float] = []
        allowed = grammars.allowed

        def timed_allowed(seqs):  # the masks' own time, beside the step's
            t0 = time.perf_counter()
            out = allowed(seqs)
            mask_s.append(time.perf_counter() - t0)
            return out

        grammars.allowed = timed_allowed  # type: ignore[method-assign]

        def run(kind: str) -> tuple[float, float, list[list[int]]]:
            engine.stats.step_times = {"prefill": [], "decode": []}
            mask_s.clear()
            ids = [engine.add_request("bench", p, sp) for p, sp in zip(prompts, params[kind])]
            final = {o.request_id: o for o in engine.run_until_done()}
            step = statistics.median(engine.stats.step_times["decode"])
            return step, statistics.median(mask_s) if mask_s else 0.0, [final[i].output_ids for i in ids]

        say("warming up (and compiling the grammar)")
        for kind in KINDS:
            run(kind)
        best: dict[str, tuple[float, float, list[list[int]]]] = {}
        for round_ in range(repeats):
            for kind in KINDS:
                say(f"timing {kind} ({round_ + 1}/{repeats})")
                result = run(kind)
                if kind not in best or result[0] < best[kind][0]:
                    best[kind] = result
    return _result(loaded, cpu_isa.describe(), batch, prompt_len, max_tokens, repeats, best)


def _result(loaded, cpu, batch, prompt_len, max_tokens, repeats, best) -> dict[str, Any]:
    free_ids, mixed_ids = best["free"][2], best["mixed"][2]
    free_rows = [i for i in range(batch) if i % 2 == 1]  # the mixed run's free rows
    step = {kind: best[kind][0] * 1e3 for kind in KINDS}
    return {
        "model": loaded.path.name,
        "plan": loaded.plan.label,
        "cpu": cpu,
        "batch": batch,
        "prompt_tokens": prompt_len,
        "max_tokens": max_tokens,
        "repeats": repeats,
        "free_step_ms": round(step["free"], 3),
        "constrained_step_ms": round(step["constrained"], 3),
        "mixed_step_ms": round(step["mixed"], 3),
        "constrained_mask_ms": round(best["constrained"][1] * 1e3, 3),
        "constrained_cost": round(step["constrained"] / step["free"] - 1, 4),  # the bound: <= 0.15
        "mixed_cost": round(step["mixed"] / step["free"] - 1, 4),
        "mixed_free_rows_match": all(free_ids[i] == mixed_ids[i] for i in free_rows),
        "constrained_tokens": sum(map(len, best["constrained"][2])),
    }


def results_table(result: dict[str, Any]):
    from rich import box
    from rich.table import Table

    table = Table(
        box=box.SIMPLE_HEAD,
        title=(
            f"{result['model']} plan {result['plan']} on {result['cpu']['model']}: batch {result['batch']}, "
            f"{result['prompt_tokens']} prompt + {result['max_tokens']} new tokens"
        ),
        caption=f"median decode step, best of {result['repeats']} rounds; cost = step / free step - 1",
    )
    for header in ("run", "step ms", "cost", "masks ms"):
        table.add_column(header, justify="right")
    table.add_row("free", f"{result['free_step_ms']:.2f}", "-", "-")
    table.add_row("constrained", f"{result['constrained_step_ms']:.2f}", f"{result['constrained_cost']:+.1%}",
                  f"{result['constrained_mask_ms']:.2f}")  # fmt: skip
    table.add_row("half/half", f"{result['mixed_step_ms']:.2f}", f"{result['mixed_cost']:+.1%}", "-")
    return table

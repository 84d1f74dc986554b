"""The figures of a ``scripts/gpu-check`` run, read back from its logs in OUT (argument 1).

Each bench prints one JSON line last; this prints the numbers that matter
from each in a few lines for people, then one JSON object for machines:
the card, the steps, the tests, the engine rows, the probe, the mux runs,
and issue #24's clauses, each judged (``pass`` None where a figure is
missing). The clause arithmetic is in functions of its own, unit-tested
with fake logs (tests/scripts/test_gpu_summary.py).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

MODELS = ("1b", "8b")  # the engine steps engine-1b, eager-1b, ...: the Llama-3.2-1B and Llama-3.1-8B shapes
ROOFLINE_LIMITS = {"8b": 1.5, "1b": 2.5}  # batch-1 decode step / weight-read roofline, at most
BATCH_LIMIT = 1.2  # batch-16 step / batch-1 step, at most
HALVES_LIMIT = 0.8  # each of two half-share jobs at once / a half share alone, at least
TOKEN_PAIRS = {"bfloat16": ("engine-{m}", "eager-{m}"), "float32": ("fp32-{m}", "fp32-eager-{m}")}


def last_json(path: Path):
    """The last line of ``path`` that parses as JSON, or None."""
    if not path.is_file():
        return None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.startswith(("{", "[")):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def pytest_counts(path: Path) -> dict[str, int] | None:
    """``{"passed": n, "failed": n, ...}`` from pytest's last summary line, or None without one."""
    if not path.is_file():
        return None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        found = re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)\b", line)
        if found and " in " in line:
            counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
            for n, kind in found:
                key = "errors" if kind.startswith("error") else kind
                counts[key] = counts.get(key, 0) + int(n)
            return counts
    return None


def read_steps(out: Path) -> list[dict]:
    """``steps.txt``'s lines ``NAME EXIT SECONDS`` as dicts, in the order run."""
    path = out / "steps.txt"
    rows = [line.split() for line in path.read_text().splitlines()] if path.is_file() else []
    return [{"name": r[0], "exit": int(r[1]), "seconds": int(r[2])} for r in rows if len(r) == 3]


def by_batch(rows) -> dict[int, dict]:
    """An engine bench's JSON rows keyed by batch size ({} where the step left none)."""
    return {r["batch"]: r for r in rows or [] if isinstance(r, dict) and "batch" in r}


def clause(text: str, value: float | None, limit: float, passed: bool | None, note: str | None = None) -> dict:
    return {"clause": text, "value": value, "limit": limit, "pass": passed, "note": note}


def roofline_clause(model: str, rows) -> dict:
    """The batch-1 decode step against its weight-read roofline (the bandwidth measured in the same run)."""
    limit = ROOFLINE_LIMITS[model]
    row = by_batch(rows).get(1) or {}
    value = row.get("step_vs_roofline")
    return clause(f"{model} batch-1 decode step <= {limit}x the weight-read roofline", value, limit,
                  None if value is None else value <= limit)  # fmt: skip


def batch_clause(model: str, rows) -> dict:
    """The largest batch's decode step (16 in the check, 2 in its dry run) against the batch-1 step:
    batching must cost (almost) nothing while a step reads the weights once for every row."""
    rows = by_batch(rows)
    big = max((b for b in rows if b > 1), default=16)
    one, many = (rows.get(b, {}).get("decode_step_ms") for b in (1, big))
    value = round(many / one, 3) if one and many is not None else None
    return clause(f"{model} batch-{big} decode step <= {BATCH_LIMIT}x the batch-1 step", value, BATCH_LIMIT,
                  None if value is None else value <= BATCH_LIMIT)  # fmt: skip


def token_match(graph_rows, eager_rows) -> dict[int, float]:
    """Per batch size both runs have: the share of rows whose greedy tokens (their digests) are equal."""
    graph, eager = by_batch(graph_rows), by_batch(eager_rows)
    shares = {}
    for batch in sorted(graph.keys() & eager.keys()):
        a, b = graph[batch].get("output_digests"), eager[batch].get("output_digests")
        if a and b and len(a) == len(b):
            shares[batch] = round(sum(x == y for x, y in zip(a, b)) / len(a), 3)
    return shares


def token_shares(pairs: dict[str, tuple]) -> dict[str, float]:
    """``{"1b b16": share}``: rows equal per (model, batch) that both runs of ``pairs`` (model -> (graph
    rows, eager rows)) have."""
    return {f"{m} b{b}": s for m, (g, e) in pairs.items() for b, s in token_match(g, e).items()}


def tokens_clause(shares: dict[str, dict[str, float]]) -> dict:
    """Greedy tokens of the Triton/graph path equal to the eager path's, judged in float32 where the
    fp32 runs are there: in bfloat16 a random model's logits are nearly flat, and one rounding of the
    attention's output that differs between the two kernels can part a row with no bug (its share of
    rows equal is then a lead, not a verdict). The value is the smallest share of rows equal."""
    dtype = "float32" if shares.get("float32") else "bfloat16"
    per = shares.get(dtype) or {}
    value = round(min(per.values()), 3) if per else None
    note = f"{dtype}: " + ", ".join(f"{k}: {v}" for k, v in per.items()) if per else None
    return clause("greedy tokens equal to the eager path (share of rows equal)", value, 1.0,
                  None if value is None else value >= 1.0, note)  # fmt: skip


def halves_clause(probe) -> dict:
    """Two half-share jobs at once on green contexts, each against a half share alone (the probe's)."""
    green = (probe or {}).get("green_contexts") or {}
    ratios = [r for r in green.get("two_halves_vs_solo") or [] if r is not None]
    value = min(ratios) if len(ratios) == 2 else None
    compute = green.get("compute") or {}
    note = None
    if compute:
        note = f"compute: {compute.get('kind')}" + (f" ({compute['note']})" if compute.get("note") else "")
        note += f", disjoint: {compute['disjoint']}" if "disjoint" in compute else ""
    return clause(f"two half-share jobs on green contexts each >= {HALVES_LIMIT} of solo speed", value, HALVES_LIMIT,
                  None if value is None else value >= HALVES_LIMIT, note)  # fmt: skip


def engine_rows(logs: dict[str, list]) -> list[dict]:
    """One flat row per engine step and batch: step, roofline, their ratio, the bandwidth, tok/s."""
    rows = []
    for name, result in logs.items():
        for batch, r in by_batch(result).items():
            rows.append({
                "step": name, "model": r.get("model"), "dtype": r.get("dtype"), "batch": batch,
                "step_ms": r.get("decode_step_ms"), "roofline_ms": r.get("roofline_step_ms"),
                "ratio": r.get("step_vs_roofline"), "bandwidth_gb_s": r.get("bandwidth_gb_s"),
                "tok_s": r.get("muxd_tok_s"), "prefill_ms": r.get("prefill_ms"),
            })  # fmt: skip
    return rows


def mux_policies(report) -> dict | None:
    """A mux bench's figures per policy, or None where it left none."""
    if not report:
        return None
    keys = ("throughput_req_s", "throughput_tok_s", "slo_attainment", "finished", "requests",
            "ttft_p99_s", "tpot_p99_s")  # fmt: skip
    policies = {policy: {k: _round(p.get(k)) for k in keys} for policy, p in report.get("policies", {}).items()}
    compute = next((p["compute"] for p in report.get("policies", {}).values() if p.get("compute")), None)
    return policies | ({"compute": compute} if compute else {})


def _round(x):
    return round(x, 4) if isinstance(x, float) else x


def summarize(out: Path) -> dict:
    """The run in ``out`` as one JSON-ready object, clauses judged."""
    probe = last_json(out / "probe.log")
    engine_names = [f"{kind}-{m}" for kind in ("engine", "eager", "fp32", "fp32-eager") for m in MODELS]
    logs = {name: last_json(out / f"{name}.log") for name in engine_names if (out / f"{name}.log").is_file()}
    pairs = {dtype: {m: (logs.get(g.format(m=m)), logs.get(e.format(m=m))) for m in MODELS}
             for dtype, (g, e) in TOKEN_PAIRS.items()}  # fmt: skip
    clauses = [roofline_clause(m, logs.get(f"engine-{m}")) for m in ("8b", "1b")]
    clauses += [batch_clause(m, logs.get(f"engine-{m}")) for m in MODELS]
    shares = {dtype: token_shares(runs) for dtype, runs in pairs.items()}
    clauses.append(tokens_clause(shares))
    clauses.append(halves_clause(probe))
    card_keys = ("gpu", "sms", "memory_gib", "compute_capability", "driver", "device", "torch", "cuda")
    return {
        "card": {k: probe.get(k) for k in card_keys} if probe else None,
        "steps": read_steps(out),
        "tests": pytest_counts(out / "tests.log"),
        "engine": engine_rows(logs),
        "tokens_equal_eager": shares,
        "probe": {k: (probe or {}).get(k) for k in ("green_contexts", "plain_streams")} if probe else None,
        "mux": {kind: mux_policies(last_json(out / f"mux-{kind}.log")) for kind in ("green", "plain")},
        "clauses": clauses,
        "all_pass": None if any(c["pass"] is None for c in clauses) else all(c["pass"] for c in clauses),
    }


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_lines(summary: dict) -> None:
    """The few lines for people, before the JSON."""
    print("steps (name exit seconds):", "; ".join(f"{s['name']} {s['exit']} {s['seconds']}" for s in summary["steps"]))
    print("card:", json.dumps(summary["card"]))
    print("tests:", json.dumps(summary["tests"]))
    for r in summary["engine"]:
        print(f"{r['step']}: {r['model']} {r['dtype']} batch {r['batch']}: step {fmt(r['step_ms'], '.2f')} ms vs "
              f"roofline {fmt(r['roofline_ms'], '.3f')} ms ({fmt(r['ratio'], '.2f')}x, {r['bandwidth_gb_s']} GB/s), "
              f"{r['tok_s']} tok/s")  # fmt: skip
    for kind, shares in (summary["probe"] or {}).items():
        shares = shares or {}
        print(f"probe {kind}: alone {shares.get('tflops_alone_by_share')} TFLOP/s; two halves "
              f"{shares.get('tflops_two_halves')}, each / alone {shares.get('two_halves_vs_solo')}")  # fmt: skip
    for kind, policies in summary["mux"].items():
        for policy, p in (policies or {}).items():
            if policy == "compute":
                print(f"mux {kind}: shares as {p.get('kind')}, SMs by slot {p.get('sms_by_slot')}"
                      + (f" ({p['note']})" if p.get("note") else ""))  # fmt: skip
                continue
            print(f"mux {kind} {policy}: {fmt(p['throughput_req_s'], '.2f')} req/s, "
                  f"SLO {fmt(p['slo_attainment'], '.1%')}, done {p['finished']}/{p['requests']}")  # fmt: skip
    for c in summary["clauses"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[c["pass"]]
        print(f"{verdict}: {c['clause']}: {c['value']} (limit {c['limit']})" + (f"; {c['note']}" if c["note"] else ""))


def main(out: Path) -> None:
    summary = summarize(out)
    print_lines(summary)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

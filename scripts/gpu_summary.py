"""The figures of a ``scripts/gpu-check`` run, read back from its logs in OUT (argument 1).

Each bench prints one JSON line last; this prints the numbers that matter
from each, in a few lines, so that they survive where only the end of the
output is kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


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


def pytest_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if " passed" in ln or " failed" in ln or "error" in ln]
    return lines[-1] if lines else "(no pytest summary)"


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(out: Path) -> None:
    steps = (out / "steps.txt").read_text().split("\n") if (out / "steps.txt").is_file() else []
    print("steps (name exit seconds):", "; ".join(s for s in steps if s))
    probe = last_json(out / "probe.log")
    if probe:
        print("probe:", json.dumps(probe))
    for name in ("tests", "bnb-tests"):
        if (out / f"{name}.log").is_file():
            print(f"{name}:", pytest_line(out / f"{name}.log"))
    for name in ("engine", "engine-eager", "engine8b", "bnb-int8", "bnb-nf4"):
        rows = last_json(out / f"{name}.log")
        for r in rows or []:
            print(
                f"{name}: {r['model']} {r['dtype']} {r.get('quantization') or ''} batch {r['batch']}: "
                f"muxd {r['muxd_tok_s']} tok/s, hf_generate {r['hf_generate_tok_s']}, hf_cb {r['hf_cb_tok_s']}; "
                f"step {fmt(r['decode_step_ms'], '.2f')} ms vs roofline {r['roofline_step_ms']:.3f} ms "
                f"({r['bandwidth_gb_s']} GB/s); prefill {r['prefill_ms']} ms; match {r['tokens_match_hf_generate']}"
                + (f"; errors {r['errors']}" if r.get("errors") else "")
            )
    mux = last_json(out / "mux.log")
    if mux:
        w = mux["workload"]
        print(f"mux: {w['requests']} requests at {w['rate_req_s']:.2f} req/s, {w['mean_prompt_tokens']:.0f}+"
              f"{w['mean_output_tokens']:.0f} tokens; solo tpot ms: "
              + ", ".join(f"{n} {m['solo_tpot_s'] * 1e3:.1f}" for n, m in mux["models"].items()))
        for policy, p in mux["policies"].items():
            print(
                f"mux {policy}: {p['throughput_req_s']:.2f} req/s, {p['throughput_tok_s']:.0f} tok/s, "
                f"SLO {p['slo_attainment']:.1%}, done {p['finished']}/{p['requests']}, "
                f"TTFT p50 {fmt(p['ttft_p50_s'], '.3f')} s p99 {fmt(p['ttft_p99_s'], '.3f')} s, "
                f"TPOT p50 {fmt(p['tpot_p50_s'] and p['tpot_p50_s'] * 1e3, '.1f')} ms "
                f"p99 {fmt(p['tpot_p99_s'] and p['tpot_p99_s'] * 1e3, '.1f')} ms"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]))

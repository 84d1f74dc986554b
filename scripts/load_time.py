"""Load time of a checkpoint in-process, with and without prepared weights (issue #22's switching cost).

    python scripts/load_time.py --model-dir ~/.cache/muxd/models/smollm2-135m-instruct --threads 1

Loads the model ``--loads`` times per quantization, first from the checkpoint
(``use_prepared=False``), then from prepared weights (one load to write the
file, not counted, then ``--loads`` reads), on ``--threads`` intra-op threads
(the unit's background loader uses 1). The page cache is warm after the
first load of each. Also times the first greedy step after each load, which
pays for touching the mapped pages. Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from muxd.core.sequence import SamplingParams
from muxd.engine.llm_engine import LLMEngine
from muxd.models.loader import load_model


def timed_loads(args: argparse.Namespace, quantization: str, use_prepared: bool, cache: Path) -> dict:
    load_model(args.model_dir, "float32", quantization=quantization, prepared_dir=cache, use_prepared=use_prepared)
    loads, first_steps = [], []
    for _ in range(args.loads):
        t0 = time.perf_counter()
        loaded = load_model(args.model_dir, "float32", quantization=quantization, prepared_dir=cache,
                            use_prepared=use_prepared)  # fmt: skip
        loads.append(time.perf_counter() - t0)
        engine = LLMEngine({"m": loaded}, kv_cache_bytes=16 << 20)
        t0 = time.perf_counter()
        engine.generate("m", [[1, 2, 3, 4]], SamplingParams(max_tokens=1, ignore_eos=True))
        first_steps.append(time.perf_counter() - t0)
        assert loaded.prepared == use_prepared
        engine.close()  # its executor threads would otherwise compete with the next load
        del engine, loaded
        gc.collect()  # the previous model's memory is back before the next load
    return {
        "quantization": quantization, "prepared": use_prepared, "threads": torch.get_num_threads(),
        "load_s_median": round(statistics.median(loads), 3), "load_s": [round(t, 3) for t in loads],
        "first_step_s_median": round(statistics.median(first_steps), 3),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--quantization", nargs="+", default=["none", "q8"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="muxd-prepared-") as cache:
        for quantization in args.quantization:
            for use_prepared in (False, True):
                print(json.dumps(timed_loads(args, quantization, use_prepared, Path(cache))), flush=True)


if __name__ == "__main__":
    main()

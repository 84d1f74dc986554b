"""Switching cost of issue #22: how long a model takes to load into a serving unit, and what the
load does to another model's stream meanwhile.

    python scripts/switch_cost.py --model-dir ~/.cache/muxd-test/models/smollm2-135m-instruct

Starts ``muxd serve`` with the model preloaded as ``stream`` and the same files in a library
as ``other`` (on demand), then, ``--rounds`` times: streams ``--tokens`` tokens from ``stream``
alone (its TPOT unloaded), and streams again while ``other`` loads (``POST .../load``), taking
the TPOT of the tokens that arrived during the load; ``other`` is unloaded after each round.
Prints a table and one JSON line. The page cache is warm after the first round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


def stream_times(http: httpx.Client, tokens: int) -> list[float]:
    """Arrival time of each streamed chunk of a greedy completion of ``tokens`` tokens."""
    body = {"model": "stream", "prompt": "Once upon a time", "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}  # fmt: skip
    times = []
    with http.stream("POST", "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                times.append(time.perf_counter())
    return times


def tpot(times: list[float]) -> float:
    return (times[-1] - times[0]) / max(1, len(times) - 1)


def round_with_load(http: httpx.Client, socket: Path, tokens: int) -> tuple[float, float]:
    """(TPOT of the stream's tokens during the load, the load's wall time as the client saw it)."""
    window: dict[str, float] = {}

    def load() -> None:
        time.sleep(0.3)  # the stream is decoding when the load begins
        window["start"] = time.perf_counter()
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://muxd", timeout=300) as h:
            h.post("/muxd/v1/models/other/load").raise_for_status()
        window["end"] = time.perf_counter()

    loader = threading.Thread(target=load)
    loader.start()
    times = stream_times(http, tokens)
    loader.join()
    during = [t for t in times if window["start"] <= t <= window["end"]]
    http.post("/muxd/v1/models/other/unload").raise_for_status()
    return (tpot(during) if len(during) >= 3 else float("nan")), window["end"] - window["start"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mxsw", dir="/tmp"))
    (tmp / "lib").mkdir()
    (tmp / "lib" / "other").symlink_to(args.model_dir.resolve(), target_is_directory=True)
    socket = tmp / "muxd.sock"
    config = (f'socket = "{socket}"\ndevice = "cpu"\nthreads = {args.threads}\nwarm_spare = false\nkv_cache_mb = 64\n'
              f'models_dir = "{tmp / "lib"}"\n[[models]]\nname = "stream"\npath = "{args.model_dir}"\n'
              f'quantization = "{args.quantization}"\n[[models]]\nname = "other"\nquantization = "{args.quantization}"\n')  # fmt: skip
    (tmp / "muxd.toml").write_text(config)
    env = {**os.environ, "MUXD_CONFIG": str(tmp / "muxd.toml"), "HF_HUB_OFFLINE": "1"}
    log = open(tmp / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "muxd", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        http = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://muxd", timeout=300)
        deadline = time.monotonic() + 180
        while True:
            try:
                if http.get("/healthz").json()["status"] == "ok":
                    break
            except (httpx.TransportError, ValueError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit(f"the daemon did not start; see {tmp / 'serve.log'}")
            time.sleep(0.1)
        stream_times(http, 8)  # warm-up
        alone, loading, loads = [], [], []
        for _ in range(args.rounds):
            alone.append(tpot(stream_times(http, args.tokens)))
            during, took = round_with_load(http, socket, args.tokens)
            loading.append(during)
            loads.append(took)
        events = [e for e in http.get("/muxd/v1/status").json()["models"] if e["name"] == "other"]
        result = {
            "tpot_alone_ms": [round(t * 1e3, 2) for t in alone],
            "tpot_while_loading_ms": [round(t * 1e3, 2) for t in loading],
            "ratio": round(statistics.median(loading) / statistics.median(alone), 3),
            "load_s_client": [round(t, 3) for t in loads],
            "weight_bytes": events[0]["weight_bytes"] if events else None,
        }
        unit_loads = [line.split(" in ")[-1].split(" s")[0] for line in open(tmp / "serve.log") if "loaded other in" in line]
        result["load_s_unit"] = [float(t) for t in unit_loads]
        print(f"stream TPOT alone {statistics.median(alone) * 1e3:.1f} ms, while 'other' loads "
              f"{statistics.median(loading) * 1e3:.1f} ms (x{result['ratio']}); load {result['load_s_unit']} s in the unit")  # fmt: skip
        print(json.dumps(result))
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()

"""Record a real daemon's stats stream for the dashboard's tests: ``python -m tests.tui.record OUT.jsonl [SECONDS]``.

Starts a daemon on tiny random-weight models (as the end-to-end tests do)
with SLO targets, one of them too tight to meet, runs a load that rises and
falls, and writes every event and one stats document per ``KEEP_EVERY_S``
as JSON lines, the daemon's status first: ``{"event": "status" | "stats" |
"event", "data": {...}}``. Tests read them back with ``load``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

from muxd.client import AsyncClient
from muxd.protocol import Event, Stats, Status

KEEP_EVERY_S = 2.5
SLO = {"tiny-llama": "slo_ttft_ms = 4\nslo_tpot_ms = 50", "tiny-qwen3": "slo_ttft_ms = 200\nslo_tpot_ms = 50\nslo_goal = 0.95"}


def load(path: Path) -> tuple[Status, list[Stats], list[Event]]:
    """A recording's status, and its stats documents and events in order."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    status = next(Status.model_validate(x["data"]) for x in lines if x["event"] == "status")
    stats = [Stats.model_validate(x["data"]) for x in lines if x["event"] == "stats"]
    events = [Event.model_validate(x["data"]) for x in lines if x["event"] == "event"]
    return status, stats, events


async def requests(socket: Path, seconds: float) -> None:
    """Both models, with 1 to 6 requests at a time, rising and falling every 20 s."""
    async with AsyncClient(socket) as client:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            width = 1 + round(5 * abs((elapsed % 40) - 20) / 20)
            prompts = [("tiny-llama" if i % 3 else "tiny-qwen3", "The capital of France is " * (1 + i)) for i in range(width)]
            await asyncio.gather(*(client.complete(m, p, max_tokens=24, ignore_eos=True) for m, p in prompts))


async def record(socket: Path, seconds: float) -> list[dict]:
    kept_at = 0.0
    async with AsyncClient(socket) as client:
        lines = [{"event": "status", "data": (await client.status()).model_dump(mode="json")}]
        stream = await client.stats_stream(interval_ms=500, last_event_id=0)
        load_task = asyncio.create_task(requests(socket, seconds))
        async for item in stream:
            if isinstance(item, Event):
                lines.append({"event": "event", "data": item.model_dump(mode="json")})
            elif item.time - kept_at >= KEEP_EVERY_S:
                kept_at = item.time
                lines.append({"event": "stats", "data": item.model_dump(mode="json", exclude_defaults=True)})
            if load_task.done():
                break
        await stream.aclose()
        await load_task
    return lines


def main(out: Path, seconds: float) -> None:
    from muxd.models.factory import build_tiny_checkpoint
    from tests.e2e.conftest import short_tmp_dir, start_daemon, tiny_config

    tmp = short_tmp_dir()
    models = {"tiny-llama": build_tiny_checkpoint("llama", tmp / "llama"), "tiny-qwen3": build_tiny_checkpoint("qwen3", tmp / "qwen3")}
    config = tiny_config(models, tmp / "muxd.sock")
    for name, path in models.items():
        config = config.replace(f'path = "{path}"\n', f'path = "{path}"\n{SLO[name]}\n')
    daemon = start_daemon(config, tmp)
    try:
        lines = asyncio.run(record(daemon.socket, seconds))
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    out.write_text("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
    print(f"{out}: {sum(x['event'] == 'stats' for x in lines)} stats documents, {sum(x['event'] == 'event' for x in lines)} events")


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 90.0)

"""The client verbs: ``muxd run``, ``ps``, ``ls``, ``load``, ``unload``, ``stats``, ``stop``.

They talk to a running daemon through ``muxd.client`` only, imported in the
command bodies: no torch, and ``muxd ps`` answers in a fraction of a second.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from muxd.cli.common import FAILURE, exit_with

if TYPE_CHECKING:
    from muxd.client import Client

SocketOption = Annotated[
    Path | None, typer.Option("--socket", help="The daemon's socket (default: found as `muxd serve` picks it).")
]


def run(
    model: Annotated[str, typer.Argument(help="A served model (see `muxd ps`).")],
    prompt: Annotated[str | None, typer.Argument(help="Answer this and exit; without it, chat.")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens per answer at most.")] = 512,
    temperature: Annotated[float | None, typer.Option(min=0, help="0 for greedy (default: the model's).")] = None,
    system: Annotated[str | None, typer.Option(help="A system message to start the conversation.")] = None,
    socket: SocketOption = None,
) -> None:
    """Chat with MODEL, streaming its answers. With no PROMPT, read one message per line until EOF or /bye."""
    from muxd.client import Client
    from muxd.errors import MuxdError

    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    try:
        with Client(socket) as client:
            if prompt is not None:
                _answer(client, model, [*history, {"role": "user", "content": prompt}], max_tokens, temperature)
                return
            interactive = sys.stdin.isatty()
            if interactive:
                typer.secho(f"chatting with {model}; /bye or Ctrl-D to end", dim=True, err=True)
            for line in _lines(interactive):
                if line in ("/bye", "/exit", "/quit"):
                    break
                history.append({"role": "user", "content": line})
                history.append({"role": "assistant", "content": _answer(client, model, history, max_tokens, temperature)})
    except MuxdError as e:
        exit_with(e.message, code=FAILURE)


def _lines(interactive: bool):
    while True:
        try:
            line = input(">>> ") if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            return
        if not interactive and not line:
            return
        if line.strip():
            yield line.strip()


def _answer(client: Client, model: str, messages: list[dict[str, str]], max_tokens: int, temperature: float | None) -> str:
    parts = []
    with client.chat(model, messages, stream=True, max_tokens=max_tokens, temperature=temperature) as stream:
        for chunk in stream:
            if chunk.text:
                parts.append(chunk.text)
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(parts)


def ps(socket: SocketOption = None) -> None:
    """The models in memory: unit, state, memory, expected rate, tokens/s and when keep-alive unloads them."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from muxd.client import Client
    from muxd.errors import MuxdError

    try:
        with Client(socket) as client:
            status, stats = client.status(), client.stats()
    except MuxdError as e:
        exit_with(e.message, code=FAILURE)
    page_bytes = {u.name: (u.pool.bytes / u.pool.pages_total if u.pool and u.pool.pages_total else 0) for u in status.units}
    table = Table(title=f"muxd {status.version} (pid {status.pid}) on {status.socket}, up {_duration(status.uptime_s)}",
                  box=box.SIMPLE_HEAD, pad_edge=False)  # fmt: skip
    rows = []
    for m in (m for m in status.models if m.load_state != "unloaded"):
        s = stats.models.get(m.name)
        kv = (s.pages_held or 0) * page_bytes.get(m.unit, 0) if s else 0
        memory = _bytes((m.weight_bytes or 0) + kv) if m.weight_bytes is not None else "-"
        state = m.load_state if m.state == "ready" else m.state  # a unit restarting says so
        rows.append((
            m.name, m.unit, state, memory, f"{m.rate:g} r/s",
            f"{s.tokens_out_per_s:.1f}" if s else "-", str(s.running) if s else "-", str(s.queued) if s else "-",
            _until(m), m.plan or "-",
        ))  # fmt: skip
    headers = ("MODEL", "UNIT", "STATE", "MEMORY", "RATE", "TOKENS/S", "RUNNING", "QUEUED", "UNTIL")
    for i, header in enumerate(headers):  # whole; on a narrow terminal only PLAN, last, is cut short
        width = max([len(header), *(len(row[i]) for row in rows)])
        table.add_column(header, justify="left" if i < 3 else "right", no_wrap=True, min_width=width)
    table.add_column("PLAN", overflow="ellipsis", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _until(m: Any) -> str:
    """When keep-alive unloads a model, as ``ollama ps``'s UNTIL says it."""
    if m.pinned:
        return "pinned"
    if m.keep_alive_s < 0:
        return "forever"
    if m.load_state != "loaded":
        return "-"
    return "busy" if m.expires_in_s is None else f"in {_duration(m.expires_in_s)}"


def ls(
    models_dir: Annotated[Path | None, typer.Option(help="Without a daemon: the library to list (default: "
                                                         "$MUXD_MODELS_DIR, else $XDG_DATA_HOME/muxd/models).")] = None,
    socket: SocketOption = None,
) -> None:
    """The model library: every model the daemon can serve, loaded or not, with its state and size.

    Without a running daemon, the models a library directory holds (nothing is loaded then)."""
    from muxd.client import Client, DaemonNotRunningError
    from muxd.errors import MuxdError

    try:
        with Client(socket) as client:
            status = client.status()
    except DaemonNotRunningError:
        _ls_directory(models_dir)
        return
    except MuxdError as e:
        exit_with(e.message, code=FAILURE)
    table = _table(f"{len(status.models)} models", "MODEL", "STATE", "SIZE", "WEIGHTS", "UNIT", "KEEP-ALIVE", "PATH")
    for m in status.models:
        weights = "-" if m.weight_bytes is None else ("~" if m.weight_bytes_estimated else "") + _bytes(m.weight_bytes)
        keep = "pinned" if m.pinned else "forever" if m.keep_alive_s < 0 else f"{m.keep_alive_s:g} s"
        table.add_row(m.name, m.load_state, "-" if m.size_bytes is None else _bytes(m.size_bytes), weights, m.unit,
                      keep, m.path)  # fmt: skip
    from rich.console import Console

    Console().print(table)


def _ls_directory(models_dir: Path | None) -> None:
    """``muxd ls`` with no daemon: the library's files, read by ``muxd.library`` (no torch)."""
    import os

    from rich.console import Console

    from muxd.library import default_models_dir, scan

    root = models_dir or (Path(os.environ["MUXD_MODELS_DIR"]) if os.environ.get("MUXD_MODELS_DIR") else default_models_dir())
    entries = scan(root.expanduser())
    table = _table(f"{len(entries)} models in {root} (no daemon running)", "MODEL", "KIND", "SIZE", "PATH")
    for e in entries:
        table.add_row(e.name, e.kind, _bytes(e.file_bytes), str(e.path))
    Console().print(table)


def load(
    model: Annotated[str, typer.Argument(help="A model of the library (see `muxd ls`).")],
    keep_alive: Annotated[str | None, typer.Option(help='How long it stays loaded when idle: "5m", seconds, -1 forever.')] = None,
    socket: SocketOption = None,
) -> None:
    """Load MODEL now (unloading idle models if its unit's memory budget needs room)."""
    from muxd.client import Client
    from muxd.errors import MuxdError

    t0 = time.monotonic()
    try:
        with Client(socket) as client:
            m = client.load_model(model, keep_alive)
    except MuxdError as e:
        exit_with(e.message, code=FAILURE)
    weights = "" if m.weight_bytes is None else f", {_bytes(m.weight_bytes)} of weights"
    typer.echo(f"{model} loaded on {m.unit} in {time.monotonic() - t0:.2f} s{weights}; until: {_until(m)}")


def unload(
    model: Annotated[str, typer.Argument(help="A loaded model (see `muxd ps`).")],
    socket: SocketOption = None,
) -> None:
    """Unload MODEL once its requests have finished."""
    from muxd.client import Client
    from muxd.errors import MuxdError

    try:
        with Client(socket) as client:
            client.unload_model(model)
    except MuxdError as e:
        exit_with(e.message, code=FAILURE)
    typer.echo(f"{model} unloaded")


def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print /muxd/v1/stats as JSON.")] = False,
    socket: SocketOption = None,
) -> None:
    """Per-model requests, tokens/s, latencies and KV pages; per-unit pool and device figures."""
    from rich.console import Console

    from muxd.client import Client
    from muxd.errors import MuxdError

    try:
        with Client(socket) as client:
            doc = client.stats()
    except MuxdError as e:
        exit_with(e.message, code=FAILURE)
    if as_json:
        typer.echo(json.dumps(doc.model_dump(mode="json")))
        return
    requests = _table("requests", "MODEL", "RUNNING", "QUEUED", "DONE", "ERRORS", "429s", "TOKENS/S", "SHARE", "SLO MET")
    window = f"latency (last {doc.latency_window_s:.0f} s) and memory"
    latency = _table(window, "MODEL", "TTFT p50 ms", "p99", "TPOT p50 ms", "p99", "E2E p99 ms", "KV PAGES", "QUOTA")
    for name, m in doc.models.items():
        slo = "-" if m.slo.attainment is None else f"{m.slo.attainment:.0%}"
        requests.add_row(name, str(m.running), str(m.queued), str(m.done), str(m.errors), str(m.rejected),
                         f"{m.tokens_out_per_s:.1f}", f"{m.share.total:.0%}", slo)  # fmt: skip
        lat = m.latency
        latency.add_row(name, _ms(lat.ttft_ms.p50), _ms(lat.ttft_ms.p99), _ms(lat.tpot_ms.p50), _ms(lat.tpot_ms.p99),
                        _ms(lat.e2e_ms.p99), _num(m.pages_held), _num(m.pages_quota))  # fmt: skip
    units = _table("units", "UNIT", "STATE", "PAGES FREE/TOTAL", "STEPS", "PREEMPT", "DEVICE", "UTIL", "MEMORY")
    for name, u in doc.units.items():
        device, d = next(((k, v) for k, v in doc.devices.items() if v.unit == name), ("-", None))
        util = "-" if d is None or d.utilization is None else f"{d.utilization:.0%}"
        memory = "-" if d is None or d.memory_used_bytes is None else _bytes(d.memory_used_bytes)
        units.add_row(name, u.state, f"{_num(u.pages_free)}/{_num(u.pages_total)}", _num(u.steps),
                      _num(u.preemptions), device, util, memory)  # fmt: skip
    console = Console()
    for table in (requests, latency, units):
        console.print(table)


def stop(
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for the daemon to exit.")] = 60.0,
    socket: SocketOption = None,
) -> None:
    """Stop the daemon gracefully: it stops accepting, finishes in-flight requests, and exits."""
    from muxd.client import Client
    from muxd.errors import MuxdError

    try:
        with Client(socket) as client:
            client.shutdown()
            path = client.socket
    except MuxdError as e:
        exit_with(e.message, code=FAILURE)
    deadline = time.monotonic() + timeout
    while path.exists():
        if time.monotonic() > deadline:
            message = f"the daemon is still draining after {timeout:.0f} s; its socket {path} is still there"
            exit_with(message, code=FAILURE)
        time.sleep(0.05)
    typer.echo("muxd stopped")


def _table(title: str, *headers: str):
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for h in headers:
        left = ("MODEL", "UNIT", "STATE", "DEVICE", "KEEP-ALIVE", "PATH")
        table.add_column(h, justify="left" if h in left else "right", no_wrap=True)
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _num(value: Any) -> str:
    return "-" if value is None else str(value)



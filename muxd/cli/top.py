"""``muxd top``: the terminal dashboard (``tui``), imported only when the command runs."""

from __future__ import annotations

from typing import Annotated

import typer

from muxd.cli.client_verbs import SocketOption


def top(
    socket: SocketOption = None,
    interval_ms: Annotated[int, typer.Option(min=100, max=10_000, help="How often the daemon sends figures.")] = 500,
) -> None:
    """A live dashboard of the daemon: models, devices, events (`?` lists the keys, `q` quits)."""
    from muxd.client import AsyncClient
    from tui.app import MuxdTop

    # A read that waits this long means the daemon hangs: the app drops the stream and reconnects.
    timeout_s = max(5.0, 4 * interval_ms / 1000)
    MuxdTop(AsyncClient(socket, timeout=timeout_s), interval_ms=interval_ms).run()

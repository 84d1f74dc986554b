"""Daemons for the end-to-end tests: ``python -m muxd serve`` in a subprocess, reached through its socket.

Socket paths live under ``tempfile.mkdtemp(dir="/tmp")``: pytest's ``tmp_path``
can exceed the 107-byte AF_UNIX limit. Nothing sleeps to let things settle:
``wait_for`` polls a condition until a deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

T = TypeVar("T")
START_TIMEOUT_S = 120.0


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Daemon:
    """A running ``muxd serve`` and the way to reach it."""

    socket: Path
    proc: subprocess.Popen
    log_path: Path
    config_path: Path
    env: dict[str, str]

    def http(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://muxd", timeout=timeout)

    def get(self, path: str) -> httpx.Response:
        with self.http() as http:
            return http.get(path)

    def health(self) -> dict[str, Any] | None:
        try:
            return self.get("/healthz").json()
        except (httpx.TransportError, ValueError):
            return None

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        def healthy() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"muxd serve exited with {self.proc.returncode}:\n{self.log()}")
            h = self.health()
            return h is not None and h["status"] == "ok"

        wait_for(healthy, timeout, "the daemon to be healthy")

    def unit_pid(self, unit: str = "cpu0") -> int:
        status = self.get("/muxd/v1/status").json()
        return next(u["pid"] for u in status["units"] if u["name"] == unit)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"muxd serve did not stop within {timeout:.0f} s:\n{self.log()}")


def short_tmp_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="mx", dir="/tmp"))


def tiny_config(models: dict[str, Path], socket: Path, warm_spare: bool = False, **limits: Any) -> str:
    """TOML for one unit holding ``models`` (name -> dir), a small pool, and ``limits``.

    The unit is "cpu0", or the device ``$MUXD_TEST_DEVICE`` names ("cuda":
    unit "cuda0"; scripts/gpu-check runs the SDK tests so). No warm spare by
    default: a standby process per daemon would cost every test a torch
    import on a 2-core machine; the fault tests turn it on.
    """
    device = os.environ.get("MUXD_TEST_DEVICE") or "cpu"
    lines = [f'socket = "{socket}"', f'device = "{device}"', "kv_cache_mb = 16", "threads = 1",
             f"warm_spare = {str(warm_spare).lower()}", "[limits]"]  # fmt: skip
    lines += [f"{k} = {v}" for k, v in limits.items()]
    for name, path in models.items():
        lines += ["[[models]]", f'name = "{name}"', f'path = "{path}"']
    return "\n".join(lines) + "\n"


def start_daemon(config: str | None, tmp: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> Daemon:
    """Start ``muxd serve`` with ``config`` written to ``tmp/muxd.toml`` (None: no config, the demo default)."""
    from muxd.paths import find_socket

    config_path = tmp / "muxd.toml"
    full_env = {k: v for k, v in os.environ.items() if k not in ("MUXD_SOCKET", "MUXD_CONFIG")}
    full_env["HF_HUB_OFFLINE"] = "1"
    if config is not None:
        config_path.write_text(config)
        full_env["MUXD_CONFIG"] = str(config_path)
    full_env.update(env or {})
    log_path = tmp / "serve.log"
    cmd = [sys.executable, "-m", "muxd", "serve", *args]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    socket = Path(args[args.index("--socket") + 1]) if "--socket" in args else find_socket(full_env)
    daemon = Daemon(socket, proc, log_path, config_path, full_env)
    if wait:
        daemon.wait_healthy()
    return daemon


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dirs: dict[str, Path]) -> dict[str, Path]:
    """The two models every tiny daemon serves: a Llama and a Qwen3 (different shapes, one pool)."""
    return {"tiny-llama": tiny_model_dirs["llama"], "tiny-qwen3": tiny_model_dirs["qwen3"]}


@pytest.fixture(scope="session")
def tiny_daemon(tiny_models: dict[str, Path]) -> Iterator[Daemon]:
    """One daemon shared by the tests that only read from it (queue limit 64, drain 10 s)."""
    tmp = short_tmp_dir()
    daemon = start_daemon(tiny_config(tiny_models, tmp / "muxd.sock", queue_per_model=64, drain_timeout_s=10), tmp)
    yield daemon
    assert daemon.stop() == 0, daemon.log()
    shutil.rmtree(tmp, ignore_errors=True)

"""The daemon's life: a private socket, one daemon per socket, stale sockets, peers, graceful stops."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading

import httpx
import pytest

from tests.e2e.conftest import short_tmp_dir, start_daemon, tiny_config, wait_for


def test_the_socket_is_private(tiny_daemon):
    assert stat.S_IMODE(tiny_daemon.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(tiny_daemon.socket.parent.stat().st_mode) == 0o700


def test_the_front_end_process_never_loads_torch(tiny_daemon):
    maps = open(f"/proc/{tiny_daemon.proc.pid}/maps").read()
    assert "libtorch" not in maps and "libtorch" in open(f"/proc/{tiny_daemon.unit_pid()}/maps").read()


def test_a_second_serve_on_the_same_socket_is_refused_and_the_first_is_unharmed(tiny_daemon):
    second = subprocess.run(
        [sys.executable, "-m", "muxd", "serve", "--config", str(tiny_daemon.config_path)],
        capture_output=True, text=True, timeout=60, env=tiny_daemon.env,
    )  # fmt: skip
    assert second.returncode == 1
    assert f"another muxd daemon is serving {tiny_daemon.socket}" in second.stderr
    assert tiny_daemon.health()["status"] == "ok"
    assert tiny_daemon.proc.poll() is None


def test_a_peer_with_another_uid_is_refused(tiny_daemon):
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another uid (tests/server/test_uds.py checks the rule itself)")
    directory, sock = tiny_daemon.socket.parent, tiny_daemon.socket
    directory.chmod(0o711)  # let the other uid reach the socket, so that only the peer check stands in its way
    sock.chmod(0o666)
    try:
        answer = connect_as(65534, str(sock))
    finally:
        directory.chmod(0o700)
        sock.chmod(0o600)
    assert answer.startswith("HTTP/1.1 403"), answer
    body = json.loads(answer.split("\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "peer_not_allowed" and "uid 65534" in body["error"]["message"]
    assert tiny_daemon.health()["status"] == "ok"


def connect_as(uid: int, path: str) -> str:
    """Fork, drop to ``uid``, send ``GET /healthz`` over ``path``; what came back (or the error)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Python cleanup, only os._exit
        try:
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(path)
            s.sendall(b"GET /healthz HTTP/1.1\r\nhost: muxd\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            os.write(write_end, data)
        except BaseException as e:  # noqa: BLE001
            os.write(write_end, f"child error: {e!r}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    out = b""
    while chunk := os.read(read_end, 65536):
        out += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return out.decode(errors="replace")


# -- a daemon of its own: started over a stale socket, ended by SIGTERM ------------------
@pytest.fixture(scope="module")
def draining(tiny_models):
    tmp = short_tmp_dir()
    path = tmp / "muxd.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a socket file no process listens on: what a crashed daemon leaves
    stale.close()
    d = start_daemon(tiny_config(tiny_models, path, drain_timeout_s=30), tmp)
    yield d
    d.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def test_a_stale_socket_is_replaced(draining):
    assert "removing stale socket" in draining.log()
    assert draining.health()["status"] == "ok"


@contextlib.contextmanager
def own_daemon(tiny_models, wait: bool = True, **config):
    """A daemon of the test's own (the tests end it themselves), stopped and cleaned up after."""
    tmp = short_tmp_dir()
    d = start_daemon(tiny_config(tiny_models, tmp / "muxd.sock", **config), tmp, wait=wait)
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def stop_mid_stream(daemon, send_signal) -> None:
    """Start three streaming completions, stop the daemon with ``send_signal``
    once each is mid-stream, and check that every one still ends in full,
    the listener closes, and the daemon exits 0 without its socket."""
    n, results, started = 3, {}, threading.Semaphore(0)

    def stream(i: int) -> None:
        body = {"model": "tiny-llama", "prompt": "Once", "max_tokens": 150, "ignore_eos": True, "stream": True}
        with daemon.http(timeout=60) as http, http.stream("POST", "/v1/completions", json=body) as r:
            lines = []
            for line in r.iter_lines():
                if line.startswith("data: {") and not lines:
                    started.release()
                if line.startswith("data: "):
                    lines.append(line)
            results[i] = lines

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for _ in range(n):
        assert started.acquire(timeout=30)  # every request is mid-stream
    send_signal()

    def refused() -> bool:
        try:
            daemon.get("/healthz")
        except httpx.TransportError:
            return True
        return False

    wait_for(refused, 10, "the listener to close")
    for t in threads:
        t.join(timeout=60)
    for lines in results.values():
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "length"
    assert len(results) == n
    assert daemon.proc.wait(timeout=30) == 0
    assert not daemon.socket.exists()
    assert "muxd stopped" in daemon.log()


def test_sigterm_lets_in_flight_requests_finish_then_exits_0_and_removes_the_socket(draining):
    stop_mid_stream(draining, lambda: draining.proc.send_signal(signal.SIGTERM))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "systemd-stop"])
def test_a_signal_to_the_whole_process_group_drains_in_flight_requests_too(tiny_models, signum):
    """A terminal's Ctrl-C signals the whole foreground process group, and
    systemd's stop every process of the service: the units must outlive the
    drain (the daemon stops them itself), and nothing prints a traceback."""
    with own_daemon(tiny_models, drain_timeout_s=30) as d:
        assert os.getpgid(d.unit_pid()) == d.proc.pid  # the units share the daemon's group (start_new_session)
        stop_mid_stream(d, lambda: os.killpg(d.proc.pid, signum))
        assert "Traceback" not in d.log() and "restarting" not in d.log()


def test_ctrl_c_while_the_units_load_stops_the_daemon_without_restarting_them(tiny_models):
    """A stop asked for while a unit loads: the unit's Ready then is no start
    of serving, and its exit no crash to restart (which left the daemon
    waiting on a fresh unit for ever)."""
    with own_daemon(tiny_models, wait=False) as d:
        wait_for(lambda: "loads tiny-llama" in d.log(), 60, "the unit to start loading")
        os.killpg(d.proc.pid, signal.SIGINT)
        assert d.proc.wait(timeout=60) == 0, d.log()
        log = d.log()
        assert "muxd stopped" in log and "unit cpu0 stopped" in log
        assert "restarting" not in log and "muxd serving" not in log and "Traceback" not in log


def exited(pid: int) -> bool:
    """The process is gone, or a zombie nobody has reaped yet (its parent was killed)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return True


def test_the_units_of_a_killed_daemon_stop_on_their_own(tiny_models):
    """Units ignore SIGINT and SIGTERM (the daemon stops them): a daemon that
    dies without stopping them must not leave them running."""
    with own_daemon(tiny_models, warm_spare=True) as d:
        unit = d.get("/muxd/v1/status").json()["units"][0]
        pids = [unit["pid"], *([unit["spare_pid"]] if unit.get("spare_pid") else [])]
        d.proc.kill()
        d.proc.wait(timeout=10)
        wait_for(lambda: all(exited(p) for p in pids), 60, "the units to stop")


@pytest.fixture(scope="module")
def with_tcp(tiny_models):
    tmp = short_tmp_dir()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    d = start_daemon(tiny_config(tiny_models, tmp / "muxd.sock"), tmp, "--tcp", f"127.0.0.1:{port}")
    d.port = port
    yield d
    d.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def test_the_opt_in_tcp_listener_serves_the_same_api(with_tcp):
    with httpx.Client(base_url=f"http://127.0.0.1:{with_tcp.port}") as http:
        assert http.get("/healthz").json()["status"] == "ok"
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["tiny-llama", "tiny-qwen3"]
    assert "no authentication" in with_tcp.log()


def test_muxd_stop_stops_the_daemon(with_tcp):
    result = subprocess.run([sys.executable, "-m", "muxd", "stop", "--socket", str(with_tcp.socket)],
                            capture_output=True, text=True, timeout=60, env=with_tcp.env)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "muxd stopped", result.stderr
    assert with_tcp.proc.wait(timeout=30) == 0 and not with_tcp.socket.exists()


def test_a_model_that_cannot_load_stops_the_daemon_with_the_reason(tiny_model_dirs):
    tmp = short_tmp_dir()
    broken = tmp / "broken"
    shutil.copytree(tiny_model_dirs["llama"], broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    d = start_daemon(tiny_config({"broken": broken}, tmp / "muxd.sock"), tmp, wait=False)
    assert d.proc.wait(timeout=120) == 1
    assert "unit cpu0 could not load its models" in d.log() and not d.socket.exists()
    shutil.rmtree(tmp, ignore_errors=True)

"""The socket's rules: one daemon per path, stale files replaced, private modes, peer uids."""

from __future__ import annotations

import socket
import stat
import tempfile
from pathlib import Path

import pytest

from muxd.errors import ConfigError, DaemonRunningError
from muxd.server import uds


@pytest.fixture
def sock_path():
    return Path(tempfile.mkdtemp(dir="/tmp")) / "run" / "muxd.sock"


def test_claim_makes_a_private_directory_and_binds_a_private_socket(sock_path):
    held = uds.claim(sock_path)
    listener = uds.bind_unix(sock_path)
    assert stat.S_IMODE(sock_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
    listener.close()
    held.release()


def test_a_shared_sticky_directory_keeps_its_mode(sock_path):
    shared = sock_path.parent
    shared.mkdir(mode=0o700)
    shared.chmod(0o1777)  # as /tmp
    held = uds.claim(sock_path)
    listener = uds.bind_unix(sock_path)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
    listener.close()
    held.release()


def test_a_second_claim_is_refused_while_the_first_holds(sock_path):
    held = uds.claim(sock_path)
    with pytest.raises(DaemonRunningError, match="muxd stop"):
        uds.claim(sock_path)
    held.release()
    uds.claim(sock_path).release()


def test_a_live_socket_without_the_lock_is_not_touched(sock_path):
    sock_path.parent.mkdir(mode=0o700)
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(sock_path))
    live.listen()
    with pytest.raises(DaemonRunningError):
        uds.claim(sock_path)
    assert sock_path.exists()
    live.close()


def test_a_stale_socket_is_removed(sock_path):
    sock_path.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()
    held = uds.claim(sock_path)
    assert not sock_path.exists()
    held.release()


def test_a_path_too_long_for_af_unix_is_a_config_error():
    with pytest.raises(ConfigError, match="Unix sockets allow 107"):
        uds.claim(Path("/tmp") / ("x" * 120) / "muxd.sock")


def test_only_the_owner_root_and_allowed_uids_may_connect():
    allowed = uds.allowed_uids(extra=[2000], own_uid=1000)
    assert uds.peer_allowed(1000, allowed) and uds.peer_allowed(0, allowed) and uds.peer_allowed(2000, allowed)
    assert not uds.peer_allowed(1001, allowed)


def test_peer_credentials_of_a_socketpair_are_this_process():
    a, b = socket.socketpair(socket.AF_UNIX)
    import os

    assert uds.peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())
    a.close()
    b.close()

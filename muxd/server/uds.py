"""The daemon's Unix socket: claim it, bind it privately, check who connects.

uvicorn's own ``uds=`` option chmods a new socket to 0666 and silently
replaces an existing one, even a live one; so muxd binds the socket itself
and hands uvicorn the listening socket:

1. ``claim``: an exclusive ``flock`` on ``<socket>.lock`` (held for the
   daemon's life) decides which of two starting daemons wins; a socket file
   that still answers a connect is a live daemon (refuse), one that refuses
   it is stale (remove it).
2. ``bind_unix``: the directory is made 0700 (a shared sticky one such as
   ``/tmp`` is left alone), the socket is bound, chmodded
   0600 before ``listen``, so no peer can connect before it is private.
3. ``peer_checked``: every accepted connection's peer credentials
   (``SO_PEERCRED``) are checked before any byte of HTTP is read; a peer
   whose uid is not the daemon's own, root's or an allowed one gets a 403 and
   the connection is closed.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from muxd.errors import ConfigError, DaemonRunningError

log = logging.getLogger("muxd.server")

MAX_UNIX_PATH = 107  # sun_path is 108 bytes with the terminating NUL
REFUSED_IDLE_S = 5.0


@dataclass
class Claim:
    """The daemon's hold on its socket path: the lock file stays locked until ``release``."""

    path: Path
    lock_fd: int

    def release(self) -> None:
        os.close(self.lock_fd)


def claim(path: Path) -> Claim:
    """Take ``path`` for this daemon, or raise ``DaemonRunningError`` if another daemon serves it."""
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise ConfigError(f"socket path {path} is {len(os.fsencode(path))} bytes; Unix sockets allow {MAX_UNIX_PATH}")
    make_private_dir(path.parent)
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DaemonRunningError(f"another muxd daemon is serving {path}; stop it with `muxd stop` first") from None
    if path.exists() or path.is_symlink():
        if is_live(path):  # a daemon that does not take the lock (another version): leave it alone
            os.close(fd)
            raise DaemonRunningError(f"another muxd daemon is serving {path}; stop it with `muxd stop` first")
        log.warning("removing stale socket %s (no daemon answers on it)", path)
        path.unlink()
    return Claim(path, fd)


def is_live(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            return False
        return True  # EACCES and the like: someone's socket we must not touch
    finally:
        probe.close()
    return True


def make_private_dir(directory: Path) -> None:
    """Create ``directory`` 0700 (parents as needed); tighten it if it is ours, looser, and not shared.

    A sticky directory (``/tmp``: many users' files side by side) is left as
    it is: a socket put there by ``--socket /tmp/x.sock`` is private by its
    own 0600, and tightening ``/tmp`` itself, as root, once locked every
    other user out of it.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o077 and not st.st_mode & stat.S_ISVTX:
        directory.chmod(0o700)


def bind_unix(path: Path, backlog: int = 2048) -> socket.socket:
    """A listening socket at ``path``, mode 0600 before it accepts anything."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_tcp(host: str, port: int, backlog: int = 2048) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def unlink_socket(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# -- peer credentials --------------------------------------------------------
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a connected Unix socket."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


def allowed_uids(extra: Iterable[int] = (), own_uid: int | None = None) -> frozenset[int]:
    """The daemon's own uid, root, and the ones the config allows."""
    return frozenset({os.getuid() if own_uid is None else own_uid, 0, *extra})


def peer_allowed(uid: int, allowed: frozenset[int]) -> bool:
    return uid in allowed


def refusal(uid: int) -> bytes:
    """The whole HTTP response a refused peer gets before the connection closes."""
    body = json.dumps(
        {
            "error": {
                "message": f"uid {uid} may not use this muxd daemon; only its owner and root may "
                "(add the uid to allow_uids in the daemon's config to allow it)",
                "type": "PermissionDenied",
                "code": "peer_not_allowed",
                "param": None,
            }
        }
    ).encode()
    head = f"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    return head.encode() + body


def peer_checked(protocol_class: type, allowed: frozenset[int]) -> type:
    """A subclass of uvicorn's HTTP protocol that refuses Unix-socket peers whose uid is not allowed.

    The refusal is a 403 written once the peer has sent its request (written
    at once, it would meet a client still sending and end in EPIPE, so curl
    would show "broken pipe" instead of the reason), then the connection
    closes; a refused peer that sends nothing is dropped after a few seconds.
    Nothing it sends reaches the application. TCP connections (an opt-in
    listener) carry no credentials and pass.
    """

    class PeerCheckedProtocol(protocol_class):  # type: ignore[misc, valid-type]
        _refused_uid: int | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is None or sock.family != socket.AF_UNIX:
                return
            pid, uid, _gid = peer_credentials(sock)
            if not peer_allowed(uid, allowed):
                log.warning("refused a connection from uid %d (pid %d)", uid, pid)
                self._refused_uid = uid
                asyncio.get_running_loop().call_later(REFUSED_IDLE_S, transport.close)

        def data_received(self, data: bytes) -> None:
            if self._refused_uid is None:
                super().data_received(data)
            elif not self.transport.is_closing():
                self.transport.write(refusal(self._refused_uid))
                self.transport.close()

    PeerCheckedProtocol.__name__ = f"PeerChecked{protocol_class.__name__}"
    return PeerCheckedProtocol

"""Where muxd keeps its files, following the XDG base-directory spec.

Every path muxd writes derives from here, so that two daemons (or two test
runs) can live side by side by pointing them at different environments. The
functions read an injected ``env`` mapping (default: ``os.environ``) and hold
no state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

APP = "muxd"


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    return Path(home) if home else Path.home()


def _xdg(env: Mapping[str, str], var: str, default: str) -> Path:
    """``$var`` if set to an absolute path (the spec ignores relative ones), else ``~/default``."""
    value = env.get(var, "")
    if value and os.path.isabs(value):
        return Path(value)
    return _home(env) / default


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Converted models and other re-creatable data: ``$XDG_CACHE_HOME/muxd``."""
    return _xdg(_env(env), "XDG_CACHE_HOME", ".cache") / APP


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The daemon's settings file: ``$MUXD_CONFIG``, else ``$XDG_CONFIG_HOME/muxd/muxd.toml``."""
    e = _env(env)
    if e.get("MUXD_CONFIG"):
        return Path(e["MUXD_CONFIG"]).expanduser()
    return _xdg(e, "XDG_CONFIG_HOME", ".config") / APP / "muxd.toml"


def runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    """Sockets and pid files: ``$XDG_RUNTIME_DIR/muxd``.

    Without ``XDG_RUNTIME_DIR`` (containers, cron, ssh without a login
    session) it falls back to ``<cache_dir>/run``; the daemon creates it with
    mode 0700 so the socket inside is private either way.
    """
    e = _env(env)
    value = e.get("XDG_RUNTIME_DIR", "")
    if value and os.path.isabs(value):
        return Path(value) / APP
    return cache_dir(e) / "run"


def socket_path(env: Mapping[str, str] | None = None) -> Path:
    """The front end's Unix socket (keep it short: AF_UNIX paths stop near 107 bytes)."""
    return runtime_dir(env) / "muxd.sock"


def find_socket(env: Mapping[str, str] | None = None) -> Path:
    """The socket a daemon started with no ``--socket`` flag listens on, as a client finds it.

    The daemon's own order, less its flags: ``$MUXD_SOCKET``, else the
    ``socket`` key of the settings file, else :func:`socket_path`.
    """
    e = _env(env)
    if e.get("MUXD_SOCKET"):
        return Path(e["MUXD_SOCKET"]).expanduser()
    configured = _socket_in_config_file(config_path(e))
    return configured if configured is not None else socket_path(e)


def _socket_in_config_file(path: Path) -> Path | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        value = tomllib.loads(text).get("socket")
    except tomllib.TOMLDecodeError:
        return None  # the daemon reports a malformed file; a client just uses the default
    if not isinstance(value, str) or not value:
        return None
    socket = Path(value).expanduser()
    return socket if socket.is_absolute() else path.parent / socket

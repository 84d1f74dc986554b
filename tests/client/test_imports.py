"""The client library, the protocol and the front end import no torch (a fresh interpreter each)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["muxd.client", "muxd.protocol", "muxd.server.daemon", "muxd.cli.client_verbs"])
def test_module_loads_no_torch(module):
    code = f"import {module}, sys; print(' '.join(sys.modules))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert module in loaded and not loaded & {"torch", "transformers", "bitsandbytes"}

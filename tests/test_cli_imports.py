"""Import boundaries that import-linter cannot see: the CLI's start-up loads no torch.

import-linter counts imports inside functions too, so a command that imports
torch lazily is still an edge in its graph; whether torch is loaded at
start-up is checked here, in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "bitsandbytes")


def loaded_modules_after(code: str) -> set[str]:
    """Module names a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(result.stdout.splitlines()[-1].split())  # the last line: whatever ``code`` printed comes first


def test_importing_the_cli_loads_no_torch() -> None:
    loaded = loaded_modules_after("import muxd.cli.app")
    assert not loaded & set(HEAVY)


def test_muxd_help_loads_no_torch() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['muxd', '--help']\n"
        "from muxd.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )
    loaded = loaded_modules_after(code)
    assert "typer" in loaded
    assert not loaded & set(HEAVY)


def test_muxd_console_script_runs() -> None:
    script = Path(sys.executable).parent / "muxd"
    result = subprocess.run([str(script), "version"], capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    from muxd import __version__

    assert result.stdout.strip() == __version__

"""The dashboard loads no torch: not when imported, not for ``muxd top --help`` (which loads no Textual either)."""

from __future__ import annotations

from tests.test_cli_imports import HEAVY, loaded_modules_after


def test_importing_the_dashboard_loads_no_torch():
    loaded = loaded_modules_after("import tui, tui.app")
    assert "textual" in loaded
    assert not loaded & set(HEAVY)


def test_muxd_top_help_loads_no_torch():
    code = (
        "import sys\n"
        "sys.argv = ['muxd', 'top', '--help']\n"
        "from muxd.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )
    loaded = loaded_modules_after(code)
    assert "typer" in loaded
    assert not loaded & {*HEAVY, "textual", "tui"}

"""The ``muxd`` command line: thin typer commands over the library (imports stay lazy)."""

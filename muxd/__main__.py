"""``python -m muxd`` runs the CLI, for environments where the console script is not on PATH."""

from muxd.cli.app import main

if __name__ == "__main__":
    main()

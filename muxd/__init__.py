"""muxd: a local daemon that serves several LLMs at once (MuxServe design).

This module holds only the version, so that ``import muxd`` (and with it the
CLI's start-up and the client) stays free of torch and transformers.
"""

__version__ = "0.1.0"

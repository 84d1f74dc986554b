"""``muxd top``: a terminal dashboard of a muxd daemon (Textual), fed by ``muxd.client`` only.

``tui.app.MuxdTop`` is the app; importing this package loads neither
Textual nor torch.
"""

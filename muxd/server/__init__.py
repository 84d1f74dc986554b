"""The daemon's front end: HTTP over a Unix socket, tokenization, routing to unit processes.

Nothing here imports torch: the front end stays a small, fast process, and
the unit processes it supervises hold the models.
"""

"""The engine: KV page tensors, paged attention, model forward, runners, sampling."""

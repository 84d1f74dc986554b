"""Benchmarks that live with the code: ``muxd bench ...`` runs them."""

"""Placement: which models share which devices, and the cost model and simulator behind it (no torch)."""

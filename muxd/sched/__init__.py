"""Scheduling policies: which jobs of which models run next (no torch, no clocks)."""

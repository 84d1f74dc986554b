"""Plain data shared by the scheduler and the engine: no torch, no clocks."""

"""Scheduling policies: which jobs of which models run next (no torch, no clocks)."""

from muxd.sched.adbs import ADBSScheduler
from muxd.sched.base import Scheduler, SchedulerConfig
from muxd.sched.spatial import SpatialScheduler
from muxd.sched.temporal import TemporalScheduler

POLICIES: dict[str, type[Scheduler]] = {
    "adbs": ADBSScheduler,
    "spatial": SpatialScheduler,
    "temporal": TemporalScheduler,
}

__all__ = ["POLICIES", "Scheduler", "SchedulerConfig"]

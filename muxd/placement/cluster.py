"""The hardware a plan is made for: nodes of equal devices, typed from ``--devices 32xA100-80GB --nodes 4``.

A device is named ``KIND-<N>GB`` (its memory, as the user states it, in
GiB: an "80 GB" A100 has 81,920 MiB) or is one of the kinds in
``KNOWN_DEVICES``. Units of a plan never span nodes: tensor parallelism
within a node only, over meshes of 1, 2, 4 or 8 devices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GiB = 1 << 30
KNOWN_DEVICES = {"A100-80GB": 80 * GiB, "A100-40GB": 40 * GiB, "H100-80GB": 80 * GiB, "H200-141GB": 141 * GiB}
MESH_SIZES = (1, 2, 4, 8)
_DEVICES = re.compile(r"^(?:(\d+)x)?([A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*?)(?:-(\d+(?:\.\d+)?)GB)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Device:
    """One kind of accelerator (or ``cpu``): its name and its memory in bytes."""

    kind: str
    memory_bytes: int

    def __post_init__(self) -> None:
        if self.memory_bytes <= 0:
            raise ValueError(f"device {self.kind!r}: memory must be > 0 bytes")


@dataclass(frozen=True)
class Cluster:
    """``nodes`` nodes of ``per_node`` devices of one kind each.

    Invariant: ``per_node >= 1`` and ``nodes >= 1``; devices of a node are
    numbered 0..per_node-1.
    """

    device: Device
    nodes: int = 1
    per_node: int = 1

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.per_node < 1:
            raise ValueError(f"a cluster needs >= 1 node and >= 1 device per node, got {self.nodes} x {self.per_node}")

    @property
    def devices(self) -> int:
        return self.nodes * self.per_node

    def describe(self) -> str:
        return f"{self.devices}x{self.device.kind} ({self.nodes} node{'s' * (self.nodes > 1)} x {self.per_node})"

    @classmethod
    def parse(cls, devices: str, nodes: int = 1) -> Cluster:
        """``"32xA100-80GB"`` over ``nodes`` nodes; the count must split evenly."""
        m = _DEVICES.match(devices.strip())
        if not m:
            raise ValueError(f"cannot read devices {devices!r}; write COUNTxKIND-MEMGB, e.g. 32xA100-80GB or 2xL4-24GB")
        count = int(m.group(1) or 1)
        kind, memory = m.group(2), m.group(3)
        if memory is not None:
            name = f"{kind}-{memory}GB"
            memory_bytes = int(float(memory) * GiB)
        else:
            known = {k.lower(): k for k in KNOWN_DEVICES}
            if kind.lower() not in known:
                raise ValueError(f"device kind {kind!r} has no known memory; write it as {kind}-<N>GB "
                                 f"(known: {', '.join(KNOWN_DEVICES)})")
            name = known[kind.lower()]
            memory_bytes = KNOWN_DEVICES[name]
        if nodes < 1 or count % nodes:
            raise ValueError(f"{count} devices do not split evenly over {nodes} nodes")
        return cls(Device(name, memory_bytes), nodes=nodes, per_node=count // nodes)


def node_partitions(per_node: int, sizes: tuple[int, ...] = MESH_SIZES) -> list[tuple[int, ...]]:
    """Every way to split a node's devices into meshes of the given sizes, largest mesh first, sorted.

    8 devices: 10 ways ((8,), (4, 4), (4, 2, 2), ..., (1,) * 8); devices
    that no size fits exactly are left out of the last mesh rather than
    refused (a 6-device node: (4, 2), (4, 1, 1), ...).
    """
    out: set[tuple[int, ...]] = set()

    def split(left: int, largest: int, parts: tuple[int, ...]) -> None:
        fits = [s for s in sizes if s <= min(left, largest)]
        if not fits:
            if parts:
                out.add(parts)
            return
        for s in fits:
            split(left - s, s, parts + (s,))

    split(per_node, max(sizes), ())
    return sorted(out, reverse=True)

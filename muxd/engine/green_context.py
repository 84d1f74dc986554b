"""Disjoint compute shares on a GPU: green contexts of disjoint SM groups, through the CUDA driver API.

MuxServe gives each job a share of the GPU's compute: a 50 % decode of one
model beside a 50 % prefill of another. torch's ``GreenContext.create`` takes
an SM count and carves every context from the same first SMs, so two half
shares ran on the same half (docs/gpu-check.md). Here the device's SMs are
split once into groups (``cuDevSmResourceSplitByCount``), the executor's
slots are dealt runs of those groups (``deal``), and a job holding slots S
runs in a green context made of S's groups (``cuDevResourceGenerateDesc``
takes several results of one split) on a stream of that context, wrapped
as ``torch.cuda.ExternalStream``. Jobs on disjoint slots then run on
disjoint SMs.

The driver is reached with ctypes (``libcuda.so.1``, CUDA 12.4+), no new
dependency; where it lacks green contexts the executor falls back to plain
streams and says why (``ComputeShares.note``, in ``/muxd/v1/status``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import sys
import threading
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Protocol

# cuda.h
_RESOURCE_TYPE_SM = 1
_GREEN_CTX_DEFAULT_STREAM = 0x1  # cuGreenCtxCreate requires it
_STREAM_NON_BLOCKING = 0x1  # cuGreenCtxStreamCreate requires it


def min_group_sms(major: int) -> int:
    """The smallest SM group the driver makes on compute capability ``major`` (cuDevSmResourceSplitByCount:
    1 SM before Volta, 2 on 7.x, 4 on 8.x, 8 from Hopper on); it rounds larger counts to its granularity."""
    return 1 if major < 7 else 2 if major == 7 else 4 if major == 8 else 8


def deal(group_sms: Sequence[int], slots: int) -> list[tuple[int, ...]]:
    """Each slot's groups: consecutive runs, cut at the group boundary nearest ``total × i / slots``.

    With at least as many groups as slots every slot gets its own, so slots
    held by different jobs never share an SM. With fewer, a slot left empty
    takes the group under its share's midpoint, which a neighbour also has
    (``disjoint`` says whether that happened). An H100's 132 SMs split by 8
    (15 groups of 8 and a remainder of 12) dealt to 10 slots: 16, 8, 16, 16,
    8, 16, 16, 8, 16, 12 SMs, two halves of 64 and 68.
    """
    if slots < 1 or not group_sms:
        raise ValueError(f"dealing needs a slot and a group, got {slots} slots and {len(group_sms)} groups")
    total, ends, acc = sum(group_sms), [], 0
    for sms in group_sms:
        acc += sms
        ends.append(acc)  # SMs up to the end of each group
    cuts = [0]
    for i in range(1, slots):
        target = total * i / slots
        nearest = min(range(len(ends)), key=lambda g: abs(ends[g] - target))
        cuts.append(max(cuts[-1], nearest + 1))
    cuts.append(len(group_sms))
    dealt = []
    for i in range(slots):
        run = tuple(range(cuts[i], cuts[i + 1]))
        if not run:  # fewer groups than slots: the group under this slot's midpoint
            mid = total * (i + 0.5) / slots
            run = (next(g for g, end in enumerate(ends) if end > mid),)
        dealt.append(run)
    return dealt


def disjoint(dealt: Sequence[tuple[int, ...]]) -> bool:
    """Whether no group is dealt to two slots."""
    seen = [g for run in dealt for g in run]
    return len(seen) == len(set(seen))


def pick_slots(free: set[int], want: int) -> list[int]:
    """``want`` of the ``free`` slots: the first run of consecutive ones where there is one (a job's SMs
    then come in one piece, and few distinct slot sets mean few green contexts), else the lowest."""
    ordered = sorted(free)
    for i in range(len(ordered) - want + 1):
        if ordered[i + want - 1] - ordered[i] == want - 1:
            return ordered[i : i + want]
    return ordered[:want]


class Driver(Protocol):
    """What ``SmPartition`` needs of the CUDA driver (``CudaDriver``; a fake in the tests)."""

    def split(self, device: int, min_count: int) -> list[int]:
        """Split the device's SMs into groups of at least ``min_count``, the remainder last; their SM counts."""

    def context_stream(self, device: int, groups: Sequence[int]) -> tuple[int, int]:
        """A green context of these groups of the split and a non-blocking stream in it: (context, stream)."""

    def destroy(self, context: int, stream: int) -> None: ...


class SmPartition:
    """A device's SMs split into groups and dealt to ``slots``; ``stream(slot_ids)`` runs on those slots' SMs.

    Invariant: a slot set maps to one green context and one stream, made on
    first use and kept until ``release``; the executor never gives one slot
    to two jobs at once, so a stream carries one job at a time.
    """

    def __init__(self, driver: Driver, device: int, slots: int, min_count: int,
                 wrap: Callable[[int], object]) -> None:  # fmt: skip
        self.driver, self.device, self.wrap = driver, device, wrap
        self.group_sms = driver.split(device, min_count)
        self.dealt = deal(self.group_sms, slots)
        self.disjoint = disjoint(self.dealt)
        self._made: dict[tuple[int, ...], tuple[int, int, object]] = {}  # slot ids -> (context, stream, wrapped)
        self._lock = threading.Lock()  # workers make streams on first use, each on its own thread

    def sms_by_slot(self) -> list[int]:
        return [sum(self.group_sms[g] for g in run) for run in self.dealt]

    def groups(self, slot_ids: Sequence[int]) -> tuple[int, ...]:
        return tuple(sorted({g for s in slot_ids for g in self.dealt[s]}))

    def sms(self, slot_ids: Sequence[int]) -> int:
        return sum(self.group_sms[g] for g in self.groups(slot_ids))

    def stream(self, slot_ids: Sequence[int]) -> object:
        key = tuple(sorted(slot_ids))
        with self._lock:
            if key not in self._made:
                context, stream = self.driver.context_stream(self.device, self.groups(key))
                self._made[key] = (context, stream, self.wrap(stream))
            return self._made[key][2]

    def slot_sets(self) -> list[tuple[int, ...]]:
        """The slot sets whose green contexts have been made."""
        with self._lock:
            return list(self._made)

    def release(self) -> None:
        """Destroy every stream, then its context (the caller has synchronised the device)."""
        with self._lock:
            for context, stream, _ in self._made.values():
                self.driver.destroy(context, stream)
            self._made.clear()


class _CUdevResource(ctypes.Structure):
    """cuda.h's ``CUdevResource``: the type, 92 bytes the driver keeps, then a 48-byte union whose
    first field, for an SM resource, is ``smCount``."""

    _fields_ = [("type", ctypes.c_int), ("_internal", ctypes.c_ubyte * 92), ("sm_count", ctypes.c_uint),
                ("_union_rest", ctypes.c_ubyte * 44)]  # fmt: skip


class CudaDriver:
    """The green-context calls of ``libcuda.so.1``; ``OSError``/``AttributeError`` where it lacks them."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libcuda.so.1")
        p, u, i = ctypes.c_void_p, ctypes.c_uint, ctypes.c_int
        res = ctypes.POINTER(_CUdevResource)
        for name, args in (
            ("cuInit", [u]), ("cuDeviceGet", [ctypes.POINTER(i), i]),
            ("cuDeviceGetDevResource", [i, res, i]),
            ("cuDevSmResourceSplitByCount", [res, ctypes.POINTER(u), res, res, u, u]),
            ("cuDevResourceGenerateDesc", [ctypes.POINTER(p), res, u]),
            ("cuGreenCtxCreate", [ctypes.POINTER(p), p, i, u]),
            ("cuGreenCtxStreamCreate", [ctypes.POINTER(p), p, u, i]),
            ("cuStreamDestroy_v2", [p]), ("cuGreenCtxDestroy", [p]),
        ):  # fmt: skip
            fn = getattr(lib, name)  # AttributeError: a driver older than CUDA 12.4
            fn.argtypes, fn.restype = args, ctypes.c_int
        self.lib = lib
        self._check(lib.cuInit(0), "cuInit")
        self._parts: dict[int, list[_CUdevResource]] = {}  # device -> its split's groups, the remainder last

    @staticmethod
    def _check(code: int, call: str) -> None:
        if code != 0:
            raise RuntimeError(f"{call} failed with CUresult {code}")

    def _device(self, index: int) -> ctypes.c_int:
        dev = ctypes.c_int()
        self._check(self.lib.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
        return dev

    def split(self, device: int, min_count: int) -> list[int]:
        lib, whole, count = self.lib, _CUdevResource(), ctypes.c_uint(0)
        self._check(lib.cuDeviceGetDevResource(self._device(device), ctypes.byref(whole), _RESOURCE_TYPE_SM),
                    "cuDeviceGetDevResource")  # fmt: skip
        # A NULL result asks how many groups the split makes; the second call makes them.
        self._check(lib.cuDevSmResourceSplitByCount(None, ctypes.byref(count), ctypes.byref(whole), None, 0, min_count),
                    "cuDevSmResourceSplitByCount")  # fmt: skip
        groups, rest = (_CUdevResource * count.value)(), _CUdevResource()
        self._check(lib.cuDevSmResourceSplitByCount(groups, ctypes.byref(count), ctypes.byref(whole), ctypes.byref(rest),
                                                     0, min_count), "cuDevSmResourceSplitByCount")  # fmt: skip
        parts = [groups[g] for g in range(count.value)] + ([rest] if rest.sm_count else [])  # the remainder: a group too
        self._parts[device] = parts
        return [part.sm_count for part in parts]

    def context_stream(self, device: int, groups: Sequence[int]) -> tuple[int, int]:
        parts = self._parts[device]
        chosen = (_CUdevResource * len(groups))(*(parts[g] for g in groups))
        desc, ctx, stream = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self.lib.cuDevResourceGenerateDesc(ctypes.byref(desc), chosen, len(groups)), "cuDevResourceGenerateDesc")
        self._check(self.lib.cuGreenCtxCreate(ctypes.byref(ctx), desc, self._device(device), _GREEN_CTX_DEFAULT_STREAM),
                    "cuGreenCtxCreate")  # fmt: skip
        self._check(self.lib.cuGreenCtxStreamCreate(ctypes.byref(stream), ctx, _STREAM_NON_BLOCKING, 0),
                    "cuGreenCtxStreamCreate")  # fmt: skip
        return ctx.value, stream.value

    def destroy(self, context: int, stream: int) -> None:
        self.lib.cuStreamDestroy_v2(ctypes.c_void_p(stream))
        self.lib.cuGreenCtxDestroy(ctypes.c_void_p(context))


def partition_device(device, slots: int) -> SmPartition | str:
    """The CUDA ``device``'s SMs dealt to ``slots``, or why they cannot be (then plain streams share every SM)."""
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    min_count = min_group_sms(torch.cuda.get_device_properties(index).major)
    failed = driver_check(index, min_count)
    if failed:
        return failed
    try:
        torch.cuda.current_stream(device).query()  # makes the primary context the green contexts come from
        part = SmPartition(CudaDriver(), index, slots, min_count,
                           wrap=lambda ptr: torch.cuda.ExternalStream(ptr, device=device))  # fmt: skip
    except RuntimeError as e:
        return f"the SMs could not be split: {e}"
    if len(part.group_sms) < 2:
        return f"the driver splits this GPU's SMs into {len(part.group_sms)} group: nothing to share"
    return part


@functools.cache
def driver_check(index: int, min_count: int) -> str | None:
    """None where a child process split GPU ``index``'s SMs and made a green context of them; else why not.

    The driver is called through ctypes with structures laid out as cuda.h
    has them; a driver that differed could crash the caller, and a unit
    that crashed at start would be restarted into the same crash. So a
    child process goes first, once per process and device.
    """
    code = "import sys; from muxd.engine.green_context import _check; _check(int(sys.argv[1]), int(sys.argv[2]))"
    root = str(Path(__file__).resolve().parents[2])  # where ``muxd`` is imported from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    try:
        done = subprocess.run([sys.executable, "-c", code, str(index), str(min_count)], capture_output=True,
                              text=True, timeout=60, env=env)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the green-context check did not finish: {e}"
    if done.returncode:
        lines = (done.stderr or "").strip().splitlines()
        return f"the green-context check failed (exit {done.returncode}): {lines[-1] if lines else 'no message'}"
    return None


def _check(index: int, min_count: int) -> None:
    """The child of ``driver_check``: the split and one green context with its stream, made and destroyed."""
    try:
        driver = CudaDriver()
    except (OSError, AttributeError) as e:
        sys.exit(f"the CUDA driver has no green contexts (CUDA 12.4+ drivers do): {e}")
    sizes = driver.split(index, min_count)
    context, stream = driver.context_stream(index, range(len(sizes)))
    driver.destroy(context, stream)

"""decode_step.c's work sharing: a slow thread's rows are taken over, each row computed once and right.

The team's threads start on static shares of a linear's rows; one done early
takes over the back half of what is left of the share furthest behind
(``gemv_shared``). A C driver runs it with one thread slowed by a sleep in
every q8 tile (tests/engine/work_sharing_driver.c), as a vCPU on a busier
core complex is slowed, and checks every row against a one-thread product.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from muxd.engine import cpu_isa, cpu_kernels

DRIVER = Path(__file__).with_name("work_sharing_driver.c")


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    cc = cpu_kernels._compiler()
    if cc is None:
        pytest.skip("no C compiler here: the kernels are not built")
    out = tmp_path_factory.mktemp("work_sharing")
    kernels = cpu_kernels.KERNELS
    flags = ["-O2", "-fopenmp", f"-I{kernels}", *cpu_isa.selected().cflags()]  # the build this CPU runs
    q8 = out / "q8.o"
    subprocess.run([cc, *flags, "-Dq8_tile=q8_tile_real", "-c", str(kernels / "q8.c"), "-o", str(q8)], check=True)
    others = [str(kernels / name) for name in ("attention.c", "norm.c", "sampling.c")]
    binary = out / "driver"
    subprocess.run([cc, *flags, str(DRIVER), *others, str(q8), "-o", str(binary), "-lm"], check=True)
    return binary


def run(driver: Path, threads: int, rows: int, rounds: int, slow_us: int) -> dict[str, int]:
    done = subprocess.run([str(driver), str(threads), str(rows), str(rounds), str(slow_us)], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(done.stdout)


@pytest.mark.parametrize("threads, rows", [(2, 1000), (3, 1001)])
def test_a_slow_threads_rows_are_taken_over_and_every_row_is_computed_once(driver, threads, rows) -> None:
    rounds = 4 * threads
    seen = run(driver, threads, rows, rounds, slow_us=50)
    assert seen["wrong"] == 0 and seen["missed"] == 0
    # The slow thread's 50 us a tile leaves most of its share to the others,
    # in every round where the OS let it start its share with them: a thread
    # takes over only shares begun in the same linear (their slots say so).
    slow_share_tiles = rows // threads // 4
    assert seen["taken_from_slow"] >= slow_share_tiles
    # A row computed twice takes an owner reading its share's end just before
    # it fell: once a round at most, with tiles this slow.
    assert seen["twice"] <= rounds


def test_more_threads_than_cores_share_rows_without_losing_any(driver) -> None:
    """Four threads on this machine's cores: the OS's time slices make the shares uneven at random."""
    seen = run(driver, 4, 997, 40, slow_us=0)
    assert seen["wrong"] == 0 and seen["missed"] == 0

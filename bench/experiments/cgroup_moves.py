"""What moving the spawning thread into a v1 cgroup and back costs, per controller.

The instance places a command in its cgroups (cgroup v1) by moving the spawning thread into
each controller's cgroup before the spawn and back afterwards (``V1Hierarchy.spawning``,
writing ``0``: the writing thread itself). This times those writes alone, without a spawn:
N moves into and out of each controller's cgroup of one cgroup with the three limits, the
controllers interleaved, and prints per controller the median, mean and p90 of a move in
and of a move out (the mean is what a loaded machine's long waits weigh). The cpu
controller makes the kernel reschedule the moved thread (``sched_move_task``), so on a
loaded machine its moves cost most. As root, cgroup v1 only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from taskrunner.process.cgroup_setup import detect_hierarchy
from taskrunner.process.cgroups import CgroupLimits, V1Hierarchy, write

LIMITS = CgroupLimits(memory_max=256 << 20, pids_max=64, cpu_max=1.0)


def spread(seconds: list[float]) -> str:
    return (f"median {statistics.median(seconds) * 1e6:5.1f}, mean "
            f"{statistics.fmean(seconds) * 1e6:6.1f}, p90 "
            f"{statistics.quantiles(seconds, n=10)[-1] * 1e6:6.1f} us")


def main(argv: list[str]) -> int:
    """Time N moves in and out per controller; one line each."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment cgroup_moves",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("n", nargs="?", type=int, default=2000, metavar="N",
                    help="moves in and out per controller")
    n = ap.parse_args(argv).n
    hierarchy = detect_hierarchy(LIMITS, "")
    try:
        if not isinstance(hierarchy, V1Hierarchy):
            print(f"{hierarchy.describe()}: cgroup v2 places a command by an exec wrapper, "
                  "not by moving a thread; nothing to time")
            return 1
        cgroup = hierarchy.make(f"bench-moves-{os.getpid()}")
        try:
            moves: dict[str, tuple[list[float], list[float]]] = {
                key: ([], []) for key in cgroup.dirs}
            for _ in range(n):
                for key, path in cgroup.dirs.items():
                    into, out = moves[key]
                    started = time.perf_counter()
                    write(os.path.join(path, "tasks"), "0")
                    moved = time.perf_counter()
                    write(os.path.join(hierarchy.homes[key], "tasks"), "0")
                    into.append(moved - started)
                    out.append(time.perf_counter() - moved)
        finally:
            cgroup.remove()
    finally:
        hierarchy.close()
    print(f"# {hierarchy.describe()}; {n} moves each way, loadavg {os.getloadavg()[0]:.2f}")
    for key, (into, out) in moves.items():
        print(f"{key:8s} in: {spread(into)}   out: {spread(out)}")
    return 0

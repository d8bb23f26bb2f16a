"""Where the time of the cgroup limits goes: spawns/s and CPU per spawn through the engine.

Spawns per second through the engine, and the instance's CPU per spawn, plain and with a
cgroup per command (reused from the pool, or made and removed for each command), next to
what an exec wrapper alone would cost. Runs /bin/true N times, 4 at a time, per variant;
variants alternate in a rotating order for ROUNDS rounds so that all see the same machine
load; prints medians. As root, on cgroup v1 or v2 with memory, pids and cpu.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator

from taskrunner.process.cgroup_pool import CgroupPool
from taskrunner.process.cgroup_setup import detect_hierarchy
from taskrunner.process.cgroups import Cgroup, CgroupLimits, V1Hierarchy
from taskrunner.process.engine import CommandSpec, ProcessEngine
from taskrunner.process.launcher import Launcher

LIMITS = CgroupLimits(memory_max=256 << 20, pids_max=64, cpu_max=1.0)
SH_WRAPPER = ("/bin/sh", "-c", 'exec "$@"', "sh")


class WrapperV1(V1Hierarchy):
    """v1 placed as v2 is: the child writes itself into each cgroup, then execs."""

    def wrapper(self, cgroup: Cgroup) -> tuple[str, ...]:
        moves = "; ".join(f"echo 0 > {path}/cgroup.procs" for path in cgroup.dirs.values())
        return ("/bin/sh", "-c", f'{moves}; exec "$@"', "sh")

    @contextlib.contextmanager
    def spawning(self, cgroup: Cgroup) -> Iterator[None]:
        yield


async def rate(launcher: Launcher, n: int,
               prefix: tuple[str, ...] = ()) -> tuple[float, float]:
    spec = CommandSpec(args=[*prefix, "/bin/true"], timeout=10)
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            result = await (await launcher.launch(spec)).result
            assert result.status == 0, result

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(4)))
    return n / (time.perf_counter() - started), (time.process_time() - cpu_started) / n


async def measure(n: int, rounds: int) -> None:
    ballast = bytearray(30 << 20)  # a parent of realistic size
    engine = ProcessEngine(max_output=1 << 20)
    pooled = CgroupPool(detect_hierarchy(LIMITS, ""), keep=64)
    fresh = CgroupPool(pooled.hierarchy, keep=0)
    h = pooled.hierarchy
    wrapped = None
    if isinstance(h, V1Hierarchy):
        wrapped = CgroupPool(WrapperV1(h.limits, h.parents, False, h.homes), keep=64)
    variants = {
        "plain": (Launcher(engine), ()),
        "sh exec wrapper, no cgroup": (Launcher(engine), SH_WRAPPER),
        "cgroup per command, fresh": (Launcher(engine, cgroups=fresh), ()),
        "cgroup per command, pooled": (Launcher(engine, cgroups=pooled), ()),
    }
    no_cpu = CgroupPool(detect_hierarchy(CgroupLimits(memory_max=LIMITS.memory_max,
                                                      pids_max=LIMITS.pids_max), ""))
    variants["memory and pids only, pooled"] = (Launcher(engine, cgroups=no_cpu), ())
    if wrapped is not None:
        variants["v1 placed by a sh wrapper, pooled"] = (Launcher(engine, cgroups=wrapped), ())
    print(f"{pooled.hierarchy.describe()}", file=sys.stderr)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    await rate(variants["plain"][0], n)
    names = list(variants)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            launcher, prefix = variants[name]
            results[name].append(await rate(launcher, n, prefix))
    for name, runs in results.items():
        print(f"| {name} | {statistics.median(r for r, _ in runs):,.0f} | "
              f"{statistics.median(c for _, c in runs) * 1e6:,.0f} µs |")
    fresh.close()
    no_cpu.close()
    if wrapped is not None:
        wrapped.close()
    pooled.close()
    engine.close()
    del ballast



def main(argv: list[str]) -> int:
    """Measure every variant; one Markdown table row each."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment engine_cgroups",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("n", nargs="?", type=int, default=1000, metavar="N",
                    help="spawns per variant and round")
    ap.add_argument("rounds", nargs="?", type=int, default=5, metavar="ROUNDS")
    args = ap.parse_args(argv)
    asyncio.run(measure(args.n, args.rounds))
    return 0

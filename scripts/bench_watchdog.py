"""Spawns per second through the engine, with and without the watchdog's hooks.

Usage: PYTHONPATH=. python3 scripts/bench_watchdog.py [N] [CONCURRENCY] [ROUNDS]
Runs /bin/true N times (CONCURRENCY at a time) per variant, alternating variants for
ROUNDS rounds so both see the same machine load; prints each round and the medians of the
rate and of the instance's own CPU time per spawn (steadier than the rate on a busy
machine), and the watchdog's CPU time.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

from taskrunner.engine import CommandSpec, ProcessEngine
from taskrunner.watchdog import Watchdog

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
CONCURRENCY = int(sys.argv[2]) if len(sys.argv) > 2 else 4
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 5


def cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def rate(engine: ProcessEngine) -> tuple[float, float]:
    spec = CommandSpec(args=["/bin/true"], timeout=10)
    left = N

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await engine.start(spec).result

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return N / (time.perf_counter() - started), (time.process_time() - cpu_started) / N


async def main() -> None:
    ballast = bytearray(30 << 20)  # a parent of realistic size
    watchdog = Watchdog()
    plain = ProcessEngine(max_output=1 << 20)
    hooked = ProcessEngine(max_output=1 << 20, on_spawn=watchdog.spawned,
                           on_reap=watchdog.reaped)
    results: dict[str, list[tuple[float, float]]] = {"without hooks": [],
                                                     "with watchdog hooks": []}
    await rate(plain)
    watchdog_cpu = cpu(watchdog.pid)
    for _ in range(ROUNDS):
        for name, engine in (("without hooks", plain), ("with watchdog hooks", hooked)):
            results[name].append(await rate(engine))
            spawns, cost = results[name][-1]
            print(f"{name:22s} {spawns:7.0f} spawns/s {cost * 1e6:6.0f} us CPU/spawn",
                  flush=True)
    for name, runs in results.items():
        print(f"median {name:22s} {statistics.median(r for r, _ in runs):7.0f} spawns/s "
              f"{statistics.median(c for _, c in runs) * 1e6:6.0f} us CPU/spawn")
    print(f"watchdog CPU over {N * ROUNDS} hooked spawns: "
          f"{cpu(watchdog.pid) - watchdog_cpu:.3f} s")
    plain.close()
    hooked.close()
    watchdog.close()
    del ballast


asyncio.run(main())

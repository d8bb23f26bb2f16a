"""Spawns per second through the engine under each containment setting and the watchdog.

Each setting as configured by taskrunner itself (`containment_from_config`), with the
watchdog's hooks, and with hooks that do nothing (so that plain, watchdog hooks and no-op
hooks are an A/B/C of the hooks); the --user rows as root only. Runs /bin/true N times, 4
at a time, per variant; variants alternate (in a rotating order) for ROUNDS rounds so all
see the same machine load; prints the median rate and the instance's CPU time per spawn
(steadier than the rate on a busy machine). Then the watchdog's own CPU time over all those
spawns, and what one command's two hook calls cost in-process (best of 5).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import time

from bench import procs
from bench.timing import best
from taskrunner.config import Config
from taskrunner.process.containment import containment_from_config
from taskrunner.process.engine import CommandSpec, ProcessEngine
from taskrunner.process.watchdog import Watchdog

LIMITED = Config(limit_as=1024, limit_nofile=256)


def ignore(pgid: int) -> None:
    """A hook that does nothing: the C of the hooks' A/B/C."""


async def rate(engine: ProcessEngine, n: int, prefix: tuple[str, ...]) -> tuple[float, float]:
    spec = CommandSpec(args=["/bin/true"], timeout=10)
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            result = await engine.start(spec, argv_prefix=prefix).result
            assert result.status == 0, result

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(4)))
    return n / (time.perf_counter() - started), (time.process_time() - cpu_started) / n


async def measure(n: int, rounds: int) -> None:
    ballast = bytearray(30 << 20)  # a parent of realistic size
    watchdog = Watchdog()
    plain = ProcessEngine(max_output=1 << 20)
    hooked = ProcessEngine(max_output=1 << 20, on_spawn=watchdog.spawned,
                           on_reap=watchdog.reaped)
    noop = ProcessEngine(max_output=1 << 20, on_spawn=ignore, on_reap=ignore)
    variants = [("plain", plain, Config()), ("watchdog hooks", hooked, Config()),
                ("no-op hooks", noop, Config()),
                ("--limit-as --limit-nofile", plain, LIMITED)]
    if os.geteuid() == 0:
        variants += [("--user nobody", plain, Config(user="nobody")),
                     ("limits + --user nobody", plain, dataclasses.replace(LIMITED, user="nobody"))]
    prefixes = {name: containment_from_config(config, os.environ).prefix
                for name, _, config in variants}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
    await rate(plain, n, ())
    for round_ in range(rounds):
        # Rotate the order each round: whichever runs first in a round tends to be faster.
        shift = round_ % len(variants)
        for name, engine, _ in variants[shift:] + variants[:shift]:
            results[name].append(await rate(engine, n, prefixes[name]))
    for name, runs in results.items():
        print(f"{name:28s} {statistics.median(r for r, _ in runs):7.0f} spawns/s "
              f"{statistics.median(c for _, c in runs) * 1e6:6.0f} us instance CPU/spawn")
    watched = len(results["watchdog hooks"]) * n
    print(f"the watchdog's CPU over {watched:,} hooked spawns: "
          f"{procs.cpu_seconds(procs.process_tree([watchdog.pid])):.3f} s")
    def hooks() -> None:
        watchdog.spawned(1)
        watchdog.reaped(1)

    print(f"one command's hooks in the instance (spawned + reaped): "
          f"{best(hooks, 5) * 1e6:.2f} us")
    plain.close()
    hooked.close()
    noop.close()
    watchdog.close()
    del ballast



def main(argv: list[str]) -> int:
    """Measure every setting; one line each."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment engine_containment",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("n", nargs="?", type=int, default=1000, metavar="N",
                    help="spawns per variant and round")
    ap.add_argument("rounds", nargs="?", type=int, default=5, metavar="ROUNDS")
    args = ap.parse_args(argv)
    asyncio.run(measure(args.n, args.rounds))
    return 0

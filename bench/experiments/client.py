"""The CLI's overhead: ``trun run -- echo hi`` against curl + ``POST /run``, whole processes.

Each command is a whole process from exec to exit, as a person at a shell would see it.
Starts an instance of this checkout (`bench.instance.taskrunner`), then runs each command
RUNS times, interleaved so both see the same machine, checking every answer, and prints
the median, 10th and 90th percentiles of the wall time, and the median CPU time (user +
system, which a loaded machine stretches less than the wall time). Also times ``python -c
pass`` and importing the CLI, which together say how much of trun's time is the
interpreter and its imports.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.instance import taskrunner


def timed(argv: list[str], expect: bytes, env: dict[str, str]) -> tuple[float, float]:
    """Wall time, and the CPU time (user + system) of the process and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or expect not in done.stdout:
        raise SystemExit(f"{argv}: status {done.returncode}, {done.stdout!r} {done.stderr!r}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu


def summary(name: str, samples: list[tuple[float, float]]) -> str:
    wall = [w for w, _ in samples]
    deciles = statistics.quantiles(wall, n=10)
    cpu = statistics.median(c for _, c in samples)
    return (f"{name:<26} wall median {statistics.median(wall) * 1000:6.1f} ms "
            f"(p10 {deciles[0] * 1000:6.1f}, p90 {deciles[-1] * 1000:6.1f})   "
            f"CPU median {cpu * 1000:6.1f} ms")


def main(argv: list[str]) -> int:
    """Time the four commands RUNS times each and print one summary line per command."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment client",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("runs", nargs="?", type=int, default=50, metavar="RUNS",
                    help="rounds of the four commands (at least 2)")
    runs = ap.parse_args(argv).runs
    if runs < 2:
        ap.error("RUNS must be at least 2 (the percentiles need two samples)")
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        instance = taskrunner([], Path(tmp) / "instance.log")
        url = f"http://127.0.0.1:{instance.port}"
        env = {**os.environ, "TASKRUNNER_URL": url}
        env.pop("TASKRUNNER_TOKEN", None)
        commands = {
            "curl + POST /run": (["curl", "-sS", "--fail-with-body", "-d",
                                  '{"args": ["echo", "hi"]}', f"{url}/run"], b'"hi\\n"'),
            "trun run -- echo hi": ([sys.executable, "-m", "taskrunner.client", "run", "--",
                                     "echo", "hi"], b"hi\n"),
            "python -c pass": ([sys.executable, "-c", "pass; print('hi')"], b"hi"),
            "python: import the CLI": ([sys.executable, "-c",
                                        "import taskrunner.client.cli; print('hi')"], b"hi"),
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        with instance:
            for cmd, expect in commands.values():  # warm the page cache
                timed(cmd, expect, env)
            for _ in range(runs):
                for name, (cmd, expect) in commands.items():
                    times[name].append(timed(cmd, expect, env))
    print(f"{runs} runs each, interleaved, against {url}")
    for name, values in times.items():
        print(summary(name, values))
    return 0

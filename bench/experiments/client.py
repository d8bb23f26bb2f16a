"""The CLI's overhead: ``trun run -- echo hi`` against ``curl`` + ``POST /run``, each a whole
process from exec to exit, as a person at a shell would see it.

Starts ``python -m taskrunner --port 0`` (this checkout), then runs each command RUNS times,
interleaved so both see the same machine, checking every answer, and prints the median,
10th and 90th percentiles of the wall time, and the median CPU time (user + system, which
a loaded machine stretches less than the wall time). Also times ``python -c pass`` and importing
the CLI, which together say how much of trun's time is the interpreter and its imports.

Usage: python3 scripts/bench_client.py [RUNS]      (default 50)
"""

from __future__ import annotations

import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchutil import start_instance


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


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        proc, port = start_instance([], os.path.join(tmp, "instance.log"))
        url = f"http://127.0.0.1:{port}"
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
        try:
            for argv, expect in commands.values():  # warm the page cache
                timed(argv, expect, env)
            for _ in range(runs):
                for name, (argv, expect) in commands.items():
                    times[name].append(timed(argv, expect, env))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    print(f"{runs} runs each, interleaved, against {url}")
    for name, values in times.items():
        print(summary(name, values))


if __name__ == "__main__":
    main()

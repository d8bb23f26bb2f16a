"""The client library warm, in one process: a job's submit and its output stream, and TLS set-up.

What ``client`` (whole processes) leaves out: in one process, against an instance of this
checkout (`bench.instance.taskrunner`), ``AsyncClient.submit`` of ``echo hi`` and then
``follow`` to its end, the first time (the process's first request: httpx and anyio import
their connection machinery on first use) and RUNS more times in a row; wall time of each
part. Then what building an ``httpx.AsyncClient`` costs with ``verify=True`` (certifi's CA
bundle loaded into a TLS context, what an http:// client did before it stopped building
one) and with ``verify=False`` (what it builds now), the two alternated RUNS times, median.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.instance import taskrunner
from taskrunner.client.aio import AsyncClient


async def one_job(client: AsyncClient) -> tuple[float, float]:
    """Seconds to submit ``echo hi``, and then to follow its output to the end."""
    started = time.perf_counter()
    job = await client.submit(["echo", "hi"])
    submitted = time.perf_counter()
    chunks = [chunk async for chunk in job.follow()]
    if not chunks:
        raise SystemExit(f"job {job}: no output followed")
    return submitted - started, time.perf_counter() - submitted


async def jobs(url: str, runs: int) -> list[tuple[float, float]]:
    async with AsyncClient(url) as client:
        return [await one_job(client) for _ in range(runs + 1)]


async def build(verify: bool) -> float:
    started = time.perf_counter()
    client = httpx.AsyncClient(verify=verify)
    elapsed = time.perf_counter() - started
    await client.aclose()
    return elapsed


async def contexts(runs: int) -> dict[bool, list[float]]:
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(runs):
        for verify in times:
            times[verify].append(await build(verify))
    return times


def ms(seconds: list[float]) -> str:
    return (f"median {statistics.median(seconds) * 1000:6.2f} ms "
            f"({min(seconds) * 1000:.2f}-{max(seconds) * 1000:.2f})")


def main(argv: list[str]) -> int:
    """Time the first and RUNS warm jobs, then the two clients' set-up; a line each."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment client_warm",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("runs", nargs="?", type=int, default=4, metavar="RUNS",
                    help="warm jobs after the first, and client set-ups of each kind")
    runs = ap.parse_args(argv).runs
    if runs < 1:
        ap.error("RUNS must be at least 1")
    with (tempfile.TemporaryDirectory(prefix="bench-client-warm-") as tmp,
          taskrunner([], Path(tmp) / "instance.log") as instance):
        times = asyncio.run(jobs(f"http://127.0.0.1:{instance.port}", runs))
    (first_submit, first_follow), warm = times[0], times[1:]
    print(f"first job: submit {first_submit * 1000:.1f} ms, follow {first_follow * 1000:.1f} ms")
    print(f"{runs} warm jobs: submit {ms([s for s, _ in warm])}, "
          f"follow {ms([f for _, f in warm])}")
    built = asyncio.run(contexts(runs))
    print(f"httpx.AsyncClient(verify=True), certifi's bundle: {ms(built[True])}")
    print(f"httpx.AsyncClient(verify=False), no TLS context:  {ms(built[False])}")
    return 0

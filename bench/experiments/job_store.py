"""Jobs with a store (--state-dir): what finished jobs cost in memory, and POST /jobs rates.

Starts ``python -m taskrunner`` from SOURCE (a checkout; compare two commits by exporting
one with ``git archive COMMIT | tar -x -C DIR``) with a fresh --state-dir, then ``rss N``:
N jobs each writing 2 MiB to stdout, four at a time, each polled until done and its whole
output checked, and the instance's RSS before and a second after; or ``post N C``: N
``POST /jobs {"args": ["true"]}``, C connections at a time, and the jobs/s and the latency
of the 202 (p50, p99).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.instance import taskrunner

MIB2 = 2 << 20


def call(conn: http.client.HTTPConnection, method: str, path: str,
         body: Any = None) -> tuple[int, Any]:
    conn.request(method, path, None if body is None else json.dumps(body))
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024  # type: ignore


def finished_jobs(port: int, n: int, pid: int) -> str:
    script = f"import sys; sys.stdout.write('x' * {MIB2})"

    def one(_: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        _, job = call(conn, "POST", "/jobs", {"args": [sys.executable, "-c", script]})
        while job["state"] in ("queued", "running"):
            time.sleep(0.05)
            _, job = call(conn, "GET", f"/jobs/{job['id']}")
        assert len(job["stdout"]) == MIB2, len(job["stdout"])
        conn.close()

    for i in range(3):
        one(i)
    before = rss_mib(pid)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(n)))
    time.sleep(1)
    return f"{n} finished jobs of 2 MiB: RSS {before:.0f} -> {rss_mib(pid):.0f} MiB"


def posts(port: int, n: int, c: int) -> str:
    def worker(k: int) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        latencies = []
        for _ in range(k):
            began = time.monotonic()
            status, _ = call(conn, "POST", "/jobs", {"args": ["true"]})
            assert status == 202, status
            latencies.append(time.monotonic() - began)
        conn.close()
        return latencies

    worker(20)
    began = time.monotonic()
    with ThreadPoolExecutor(c) as pool:
        latencies = sorted(t for part in pool.map(worker, [n // c] * c) for t in part)
    rate = len(latencies) / (time.monotonic() - began)
    return (f"{len(latencies)} POST /jobs, {c} at a time: {rate:.0f}/s, "
            f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
            f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms")


def main(argv: list[str]) -> int:
    """Run ``rss`` or ``post`` against a fresh instance of SOURCE; one line of figures."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment job_store",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("source", type=Path, metavar="SOURCE", help="the checkout to start")
    ap.add_argument("mode", choices=("rss", "post"))
    ap.add_argument("n", type=int, metavar="N", help="jobs")
    ap.add_argument("c", type=int, nargs="?", default=8, metavar="C",
                    help="connections at a time (post)")
    args = ap.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="bench-job-store-"))
    try:
        with taskrunner(["--state-dir", str(state / "store"), "--max-output", str(MIB2),
                         "--max-jobs", "100000"], state / "log", args.source) as instance:
            assert instance.port is not None
            if args.mode == "rss":
                print(finished_jobs(instance.port, args.n, instance.pid))
            else:
                print(posts(instance.port, args.n, args.c))
    finally:
        shutil.rmtree(state)
    return 0

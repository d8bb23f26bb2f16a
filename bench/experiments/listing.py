"""What one poll of the page weighs: GET /jobs with N jobs of args of SIZE bytes.

Starts ``python -m taskrunner`` from SOURCE (a checkout, its package first on the path),
submits N jobs ``printf '' <n> <SIZE bytes>``, then prints the body size of
``GET /jobs?limit=1000`` (what the page asked for on each tick before listings cut args)
and ``GET /jobs?limit=50`` (what it asks for now). A few seconds for N = 1,000.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.instance import REPO, taskrunner


def main(argv: list[str]) -> int:
    """Submit the jobs, then print one line per listing size."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment listing",
                                 description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("source", nargs="?", type=Path, default=REPO, help="a checkout")
    ap.add_argument("n", nargs="?", type=int, default=1000, help="jobs")
    ap.add_argument("size", nargs="?", type=int, default=20_000, help="bytes of each job's arg")
    args = ap.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="bench-listing-"))
    try:
        with taskrunner(["--max-queued", "2000", "--max-jobs", str(args.n + 100)],
                        scratch / "log", args.source) as instance:
            base = f"http://127.0.0.1:{instance.port}"
            arg = "a" * args.size
            for n in range(args.n):
                body = json.dumps({"args": ["printf", "", str(n), arg]}).encode()
                request = urllib.request.Request(f"{base}/jobs", body,
                                                 {"Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=30).read()
            time.sleep(1)
            for limit in (1000, 50):
                with urllib.request.urlopen(f"{base}/jobs?limit={limit}", timeout=60) as answer:
                    print(f"{args.n} jobs, args of {args.size} B: GET /jobs?limit={limit}: "
                          f"{len(answer.read()):,} bytes")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0

"""What one poll of the page weighs: ``GET /jobs`` with N jobs of args of SIZE bytes.

Starts ``python -m taskrunner`` from SOURCE (a checkout; run from it, so its package is the
one imported) on a free port of 127.0.0.1, submits N jobs ``printf '' <n> <SIZE bytes>``,
then prints the body size of ``GET /jobs?limit=1000`` (what the page asked for on each tick
before) and ``GET /jobs?limit=50`` (what it asks for now). A few seconds for N = 1,000.

Usage: python3 scripts/bench_listing.py [SOURCE] [N] [SIZE]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request


def main() -> None:
    source = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 20_000
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    instance = subprocess.Popen(
        [sys.executable, "-m", "taskrunner", "--port", str(port), "--max-queued", "2000",
         "--max-jobs", str(count + 100)],
        cwd=source, env=dict(os.environ, PYTHONPATH=source),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        arg = "a" * size
        for n in range(count):
            body = json.dumps({"args": ["printf", "", str(n), arg]}).encode()
            request = urllib.request.Request(f"{base}/jobs", body,
                                             {"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=30).read()
        time.sleep(1)
        for limit in (1000, 50):
            with urllib.request.urlopen(f"{base}/jobs?limit={limit}", timeout=60) as answer:
                print(f"{count} jobs, args of {size} B: GET /jobs?limit={limit}: "
                      f"{len(answer.read()):,} bytes")
    finally:
        instance.terminate()
        instance.wait(30)


if __name__ == "__main__":
    main()

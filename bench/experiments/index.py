"""Job creation with the PostgreSQL job index against the SQLite one, in one run.

Starts a throwaway PostgreSQL (scripts/pgserver.py) and a fresh state directory, then runs
scripts/bench_variants.py with the two variants interleaved round after round: J0 (``POST
/jobs``, submit only) and W1 (``/run``, which needs no index: the control). Everything it
started is stopped and removed at the end, also on failure.

Usage (see docs/bench.md):
    python3 scripts/bench_index.py --rounds 3 --duration 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from pgserver import PgServer

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--workloads", default="J0,W1")
    ap.add_argument("--pg-port", type=int, default=55490)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="taskrunner-bench-index-", dir="/tmp")
    os.chmod(work, 0o755)  # PostgreSQL's own user must reach its data directory
    server = PgServer(os.path.join(work, "pg"), port=args.pg_port)
    try:
        server.start()
        subprocess.run(
            [sys.executable, os.path.join(HERE, "bench_variants.py"), "--rounds",
             str(args.rounds), "--duration", str(args.duration), "--workloads",
             args.workloads, f"sqlite=--state-dir {os.path.join(work, 'state')}",
             f"postgresql=--state-url-file {server.url_file}"], check=True)
    finally:
        server.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Job creation with the PostgreSQL job index against the SQLite one, in one run.

Starts a throwaway PostgreSQL (the lab's `PgServer`) and a fresh state directory, then runs
the `variants` experiment with the two variants interleaved round after round: J0 (``POST
/jobs``, submit only) and W1 (``/run``, which needs no index: the control). Everything it
started is stopped and removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from bench.experiments import variants


def main(argv: list[str]) -> int:
    """Measure both indexes through `variants`; its exit status."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment index",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--workloads", default="J0,W1")
    ap.add_argument("--pg-port", type=int, default=55490)
    args = ap.parse_args(argv)
    # The lab package (lab/pgserver.py), imported here so that the other experiments and
    # this one's --help need none of it.
    from lab.pgserver import PgServer

    work = tempfile.mkdtemp(prefix="taskrunner-bench-index-", dir="/tmp")
    os.chmod(work, 0o755)  # PostgreSQL's own user must reach its data directory
    server = PgServer(os.path.join(work, "pg"), port=args.pg_port)
    try:
        server.start()
        return variants.main([
            "--rounds", str(args.rounds), "--duration", str(args.duration), "--workloads",
            args.workloads, f"sqlite=--state-dir {os.path.join(work, 'state')}",
            f"postgresql=--state-url-file {server.url_file}"])
    finally:
        server.remove()
        shutil.rmtree(work, ignore_errors=True)

"""Compare instances started with different flags, interleaved round after round.

The load tool (``scripts/bench --cmd ...``) on each variant in turn, round after round, so
that a busy machine weighs on all of them alike. Prints, per workload and variant, the
median req/s over rounds (min-max) and the median of the per-round ratios to the first
variant. Example: ``--rounds 5 --duration 10 --workloads W1,W2 plain= cgroups='--memory-max
256 --pids-max 64 --cpu-max 1'``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys

from bench.instance import REPO


def main(argv: list[str]) -> int:
    """Load every variant once per round; print the table."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment variants",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("variants", nargs="+", help="NAME=FLAGS; the first is the baseline")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--workloads", default="W1,W2")
    ap.add_argument("--port", type=int, default=8971)
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args(argv)
    variants = [v.partition("=")[::2] for v in args.variants]
    rps: dict[tuple[str, str], list[float]] = {}
    for rnd in range(1, args.rounds + 1):
        for name, flags in variants:
            cmd = f"{shlex.quote(args.python)} -m taskrunner --port {args.port} {flags}"
            # A load tool of its own per run: it becomes the subreaper of that instance alone.
            out = subprocess.run(
                [str(REPO / "scripts" / "bench"), "--cmd", cmd, "--url",
                 f"http://127.0.0.1:{args.port}", "--workloads", args.workloads,
                 "--duration", str(args.duration), "--rounds", "1", "--json"],
                capture_output=True, text=True, env={**os.environ, "PYTHON": args.python},
                timeout=args.duration * 10 + 300, check=True).stdout
            summary = json.loads(out)["summary"]
            for workload, row in summary.items():
                rps.setdefault((workload, name), []).append(row["rps"])
                print(f"round {rnd} {name} {workload} {row['rps']:.1f}/s "
                      f"errors={row['errors']} non2xx={row['non2xx']} check={row['checks']}",
                      file=sys.stderr, flush=True)
    base = variants[0][0]
    print("| workload | variant | req/s median (min-max) | ratio to "
          f"{base} (per-round median, min-max) |\n|---|---|---|---|")
    for workload in args.workloads.split(","):
        for name, _ in variants:
            runs = rps[(workload, name)]
            ratios = [r / b for r, b in zip(runs, rps[(workload, base)], strict=True)]
            print(f"| {workload} | {name} | {statistics.median(runs):,.1f} "
                  f"({min(runs):,.1f}-{max(runs):,.1f}) | {statistics.median(ratios):.2f} "
                  f"({min(ratios):.2f}-{max(ratios):.2f}) |")
    return 0

"""Idle memory of instances as supervisord starts them: each instance and its children (RSS).

For each SOURCE (a checkout; compare commits by exporting one with ``git archive COMMIT |
tar -x -C DIR``), in turn for ROUNDS rounds: start ``--instances`` instances from it, each
``python -m taskrunner --port 0`` with FLAGS (``{run}`` in them becomes a directory shared
by the round's instances; by default ``--recycle-lock {run}/recycle.lock``, as the stack's
supervisord.conf started them when the log's entry was measured; it now adds ``--state-dir
{run}/state``), wait until they listen and ``--settle`` seconds more, then sum VmRSS of
each instance and of its children (the watchdog), and stop them. Prints per SOURCE the
median over rounds of one instance (itself + its children) and of them all.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
import tempfile
import time
from pathlib import Path

from bench import procs
from bench.instance import REPO, taskrunner


def round_of(source: Path, count: int, flags: str, settle: float,
             tmp: Path) -> list[tuple[int, int]]:
    """(instance KiB, its children's KiB) of each of ``count`` idle instances of ``source``."""
    run = Path(tempfile.mkdtemp(dir=tmp))
    argv = shlex.split(flags.replace("{run}", str(run)))
    with contextlib.ExitStack() as stack:
        instances = [stack.enter_context(taskrunner(argv, run / f"{i}.log", source))
                     for i in range(count)]
        time.sleep(settle)
        return [(procs.rss_kib([i.pid]), procs.rss_kib(procs.process_tree([i.pid]) - {i.pid}))
                for i in instances]


def main(argv: list[str]) -> int:
    """Measure each SOURCE ROUNDS times, alternating; one line each."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment idle_memory",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("sources", nargs="*", type=Path, default=[REPO], metavar="SOURCE",
                    help="source trees to start instances from (default: this checkout)")
    ap.add_argument("--instances", type=int, default=4, metavar="N",
                    help="instances at once, as the stack runs them")
    ap.add_argument("--rounds", type=int, default=3, metavar="ROUNDS")
    ap.add_argument("--settle", type=float, default=2.0, metavar="S",
                    help="seconds to wait once they listen")
    ap.add_argument("--flags", default="--recycle-lock {run}/recycle.lock", metavar="FLAGS",
                    help="the instances' flags")
    args = ap.parse_args(argv)
    found: dict[Path, list[list[tuple[int, int]]]] = {source: [] for source in args.sources}
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        for _ in range(args.rounds):
            for source in args.sources:
                found[source].append(round_of(source, args.instances, args.flags,
                                              args.settle, Path(tmp)))
    print(f"# {args.instances} instances, {args.rounds} rounds, flags: {args.flags}")
    for source, rounds in found.items():
        one = [r[0] for r in rounds]
        own = statistics.median(i for i, _ in one) / 1024
        children = statistics.median(c for _, c in one) / 1024
        total = statistics.median(sum(i + c for i, c in r) for r in rounds) / 1024
        print(f"{source}: one instance + its children {own + children:.1f} MiB "
              f"({own:.1f} + {children:.1f}); all {args.instances}: {total:.1f} MiB")
    return 0

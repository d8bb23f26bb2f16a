"""Where one sandbox's wall time goes: bubblewrap's set-up, and its teardown after the command.

N sandboxes kept in flight at once, each running ``bash -c 'echo $EPOCHREALTIME'`` under
bubblewrap with the options of ``--sandbox`` (those of the ``sandbox`` experiment): the
command prints the time it ran, so each sandbox splits into the time from the spawn to the
command (bash's own start, about a millisecond, included) and from the command to
bubblewrap's exit being reaped. Three variants, interleaved round after round: ``--sandbox``;
without the network namespace (``--sandbox-net``'s case); and ``--sandbox`` with bubblewrap's
``--as-pid-1`` (the command as the namespace's PID 1: one process fewer, not kept, as a PID
1 ignores signals it has no handler for). Prints per variant the completions per second and
the p50 and p90 of both parts. Spawning and reaping run in threads of their own, so that
a reap never waits behind the spawns of the next sandboxes. Needs bwrap and bash.
"""

from __future__ import annotations

import argparse
import functools
import operator
import os
import statistics
import subprocess
import threading
import time

from bench.experiments.sandbox import VARIANTS

SANDBOX = VARIANTS["+ net ns (= --sandbox)"]
COMMAND = ["/bin/bash", "-c", "echo $EPOCHREALTIME"]
SPLITS: dict[str, list[str]] = {
    "--sandbox": SANDBOX,
    "--sandbox, no net ns": [o for o in SANDBOX if o != "--unshare-net"],
    "--sandbox --as-pid-1": [*SANDBOX[:-1], "--as-pid-1", "--"],
}


class InFlight:
    """Keeps ``count`` sandboxes running for ``seconds`` from this thread, while a second
    thread reaps them: a reap never waits behind the spawns of their successors."""

    def __init__(self, prefix: list[str], count: int) -> None:
        self.prefix = prefix
        self.slots = threading.Semaphore(count)
        self.changed = threading.Condition()
        self.started: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self.spawned = self.reaped = 0
        self.failed: list[str] = []  # what sandboxes that did not run their command said
        self.done = False
        self.elapsed = 0.0  # from the first spawn until the last is reaped
        self.splits: list[tuple[float, float]] = []

    def run(self, seconds: float) -> list[tuple[float, float]]:
        """(spawn to command, command to reaped) of every sandbox started within ``seconds``."""
        reaper = threading.Thread(target=self.reap)
        reaper.start()
        began = time.monotonic()
        deadline = began + seconds
        while time.monotonic() < deadline:
            self.slots.acquire()
            started = time.time()  # the command's clock: bash's $EPOCHREALTIME is wall time
            process = subprocess.Popen([*self.prefix, *COMMAND], stdout=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL)
            with self.changed:
                self.started[process.pid] = (process, started)
                self.spawned += 1
                self.changed.notify()
        with self.changed:
            self.done = True
            self.changed.notify()
        reaper.join()
        self.elapsed = time.monotonic() - began
        if self.failed:
            raise SystemExit(f"{len(self.failed)} sandboxes failed ({' '.join(self.prefix)}), "
                             f"e.g. {self.failed[0]}")
        return self.splits

    def reap(self) -> None:
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.done or self.reaped < self.spawned)
                if self.reaped == self.spawned:
                    return
            pid, status = os.wait()  # there is a child: spawned and not yet reaped
            ended = time.time()
            self.reaped += 1
            with self.changed:  # it may have ended before its Popen returned
                self.changed.wait_for(functools.partial(operator.contains, self.started, pid))
                process, started = self.started.pop(pid)
            process.returncode = os.waitstatus_to_exitcode(status)
            assert process.stdout is not None
            out = process.stdout.read()  # a few bytes: they sit in the pipe's buffer
            process.stdout.close()
            try:
                self.splits.append((float(out) - started, ended - float(out)))
            except ValueError:
                self.failed.append(f"status {process.returncode}, output {out!r}")
            self.slots.release()


def ms(seconds: list[float]) -> str:
    return (f"p50 {statistics.median(seconds) * 1000:5.1f} ms, "
            f"p90 {statistics.quantiles(seconds, n=10)[-1] * 1000:5.1f} ms")


def main(argv: list[str]) -> int:
    """Run each variant ROUNDS times for SECONDS; one line each."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment sandbox_split",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("--in-flight", type=int, default=100, metavar="N",
                    help="sandboxes running at once")
    ap.add_argument("seconds", nargs="?", type=float, default=3.0, metavar="SECONDS",
                    help="per variant and round")
    ap.add_argument("rounds", nargs="?", type=int, default=3, metavar="ROUNDS")
    args = ap.parse_args(argv)
    print(f"# {args.in_flight} in flight, {args.seconds:g} s each, {args.rounds} rounds, "
          f"uid {os.geteuid()}, loadavg {os.getloadavg()[0]:.2f}")
    splits: dict[str, list[tuple[float, float]]] = {name: [] for name in SPLITS}
    elapsed = dict.fromkeys(SPLITS, 0.0)
    for _ in range(args.rounds):
        for name, prefix in SPLITS.items():
            run = InFlight(prefix, args.in_flight)
            splits[name] += run.run(args.seconds)
            elapsed[name] += run.elapsed
    for name, values in splits.items():
        rate = len(values) / elapsed[name]
        print(f"{name:22s} {rate:5.0f}/s   spawn to command "
              f"{ms([s for s, _ in values])}   command to exit "
              f"{ms([e for _, e in values])}")
    print(f"# loadavg at the end {os.getloadavg()[0]:.2f}")
    return 0

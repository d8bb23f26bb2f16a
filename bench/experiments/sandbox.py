"""Sandboxes per second of /bin/true for each bubblewrap option set, without taskrunner.

Four at a time, for each option set: which namespace or mount costs what, the kernel set-up
alone. The variants are interleaved, round after round, and the median of the rounds is
printed, so that a change in the machine's load hits every variant alike. With
``--in-flight N``, instead: N ``sleep 0.5`` kept running at once, plain and under the full
``--sandbox`` option set, interleaved: completions per second and the p50 latency (W2
without taskrunner). Needs bwrap.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

PARALLEL = 4
TRUE = "/bin/true"
ROOT = ["--ro-bind", "/", "/"]
CAPS = ["--cap-drop", "ALL"] if os.geteuid() == 0 else []
MOUNTS = ["--dev", "/dev", "--perms", "1777", "--size", str(64 << 20), "--tmpfs", "/dev/shm",
          "--remount-ro", "/dev", "--proc", "/proc", "--perms", "1777", "--size",
          str(64 << 20), "--tmpfs", "/tmp", "--tmpfs", "/run", "--remount-ro", "/run",
          "--tmpfs", "/var/tmp", "--remount-ro", "/var/tmp"]
VARIANTS: dict[str, list[str]] = {
    "plain /bin/true": [],
    "mount ns, / read-only": ["bwrap", *CAPS, *ROOT, "--"],
    "+ pid ns and /proc": ["bwrap", *CAPS, *ROOT, "--unshare-pid", "--proc", "/proc", "--"],
    "+ ipc, uts ns": ["bwrap", *CAPS, *ROOT, "--unshare-pid", "--unshare-ipc",
                      "--unshare-uts", "--proc", "/proc", "--"],
    "+ every mount of --sandbox": ["bwrap", *CAPS, "--unshare-pid", "--unshare-ipc",
                                   "--unshare-uts", "--die-with-parent", *ROOT, *MOUNTS, "--"],
    "+ net ns (= --sandbox)": ["bwrap", *CAPS, "--unshare-pid", "--unshare-ipc",
                               "--unshare-uts", "--unshare-net", "--die-with-parent", *ROOT,
                               *MOUNTS, "--"],
    "net ns alone (mount ns, / read-only)": ["bwrap", *CAPS, *ROOT, "--unshare-net", "--"],
    "--sandbox without /dev/shm, /run, /var/tmp": [
        "bwrap", *CAPS, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
        "--die-with-parent", *ROOT, "--dev", "/dev", "--proc", "/proc", "--size",
        str(64 << 20), "--tmpfs", "/tmp", "--"],
}


def worker(prefix: list[str], deadline: float) -> int:
    count = 0
    while time.monotonic() < deadline:
        subprocess.run([*prefix, TRUE], stdin=subprocess.DEVNULL, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        count += 1
    return count


def in_flight(prefix: list[str], count: int, seconds: float) -> tuple[float, float]:
    running: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        while len(running) < count:
            process = subprocess.Popen([*prefix, "/bin/sleep", "0.5"])
            running[process.pid] = (process, time.monotonic())
        pid, _ = os.wait()
        if pid in running:
            latencies.append(time.monotonic() - running.pop(pid)[1])
    for process, _ in running.values():
        process.kill()
        process.wait()
    return len(latencies) / seconds, statistics.median(latencies)


def main_in_flight(count: int, seconds: float, rounds: int) -> None:
    print(f"# {count} sleep 0.5 in flight, {seconds:g} s each, {rounds} rounds, "
          f"loadavg {os.getloadavg()[0]:.2f}")
    variants = {"plain": [], "--sandbox": VARIANTS["+ net ns (= --sandbox)"]}
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, prefix in variants.items():
            rates[name].append(in_flight(prefix, count, seconds))
    for name, values in rates.items():
        print(f"{name:12s} {statistics.median(r for r, _ in values):6.0f}/s  "
              f"p50 {statistics.median(lat for _, lat in values) * 1000:5.0f} ms")
    print(f"# loadavg at the end {os.getloadavg()[0]:.2f}")


def main_option_sets(seconds: float, rounds: int) -> None:
    print(f"# {PARALLEL} at a time, {seconds:g} s each, {rounds} rounds, uid {os.geteuid()}, "
          f"loadavg {os.getloadavg()[0]:.2f}")
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, prefix in VARIANTS.items():
            deadline = time.monotonic() + seconds
            with ThreadPoolExecutor(PARALLEL) as pool:
                results = list(pool.map(worker, [prefix] * PARALLEL, [deadline] * PARALLEL))
            rates[name].append(sum(results) / seconds)
    plain = statistics.median(rates["plain /bin/true"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:44s} {median:7.0f}/s  {median / plain:5.2f}x plain  "
              f"(min {min(values):.0f}, max {max(values):.0f})")
    print(f"# loadavg at the end {os.getloadavg()[0]:.2f}")



def main(argv: list[str]) -> int:
    """The option sets (or ``--in-flight``), one line per variant."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment sandbox",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("--in-flight", type=int, default=0, metavar="N",
                    help="N sleep 0.5 at once, plain and sandboxed, instead")
    ap.add_argument("seconds", nargs="?", type=float, default=3.0, metavar="SECONDS",
                    help="per variant and round")
    ap.add_argument("rounds", nargs="?", type=int, default=3, metavar="ROUNDS")
    args = ap.parse_args(argv)
    if args.in_flight:
        main_in_flight(args.in_flight, args.seconds, args.rounds)
    else:
        main_option_sets(args.seconds, args.rounds)
    return 0

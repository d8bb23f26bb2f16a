"""Sandboxes per second of /bin/true, four at a time, for each bubblewrap option set: which
namespace or mount costs what. Measures the kernel set-up alone, without taskrunner. The
variants are interleaved, round after round, and the median of the rounds is printed, so
that a change in the machine's load hits every variant alike.

Usage: python3 scripts/bench_sandbox.py [SECONDS [ROUNDS]]   (default 3 s, 3 rounds; needs bwrap)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
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


def main() -> None:
    print(f"# {PARALLEL} at a time, {SECONDS:g} s each, {ROUNDS} rounds, uid {os.geteuid()}, "
          f"loadavg {os.getloadavg()[0]:.2f}")
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(ROUNDS):
        for name, prefix in VARIANTS.items():
            deadline = time.monotonic() + SECONDS
            with ThreadPoolExecutor(PARALLEL) as pool:
                results = list(pool.map(lambda _: worker(prefix, deadline), range(PARALLEL)))
            rates[name].append(sum(results) / SECONDS)
    plain = statistics.median(rates["plain /bin/true"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:44s} {median:7.0f}/s  {median / plain:5.2f}x plain  "
              f"(min {min(values):.0f}, max {max(values):.0f})")
    print(f"# loadavg at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

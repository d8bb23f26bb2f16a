"""The container image: its size, and its start time (``podman run`` to ``/readyz`` 200).

Builds the image from this checkout (lab/image.py; with ``--base`` the local Debian base,
made first if podman's store lacks it, and how long each took), or takes ``--image``
as it is. Then ROUNDS times: ``podman run -d`` with a token, the port published on
loopback, and ``GET /readyz`` from the host every 20 ms until it answers 200; the time
from just before ``podman run`` to that answer; then ``podman stop`` (its time: the
drain of an idle instance) and ``podman rm``. Prints the image's and the base's size
(podman's figure: the uncompressed layers) and the median and range of each time. Needs
podman (scripts/install) and root, as the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
import uuid

from lab.image import LOCAL_BASE, build, make_base

TAG = "localhost/taskrunner:bench"


def podman(*args: str) -> str:
    """``podman ARGS``' output; raises if it fails."""
    return subprocess.run(["podman", *args], capture_output=True, text=True,
                          check=True).stdout


def size_mb(image: str) -> float:
    """The image's size as podman counts it (uncompressed layers), in MB."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", image)) / 1e6


def ready(port: int) -> bool:
    """Whether ``/readyz`` answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except (OSError, ValueError, urllib.error.HTTPError):
        return False


def one_start(image: str) -> tuple[float, float]:
    """Seconds from ``podman run`` to ``/readyz`` 200, and ``podman stop``'s seconds."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    name = f"taskrunner-bench-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    podman("run", "--detach", "--name", name, "--publish", f"127.0.0.1:{port}:8080",
           "--env", "TASKRUNNER_TOKEN=bench-token-0123456789", image)
    try:
        while not ready(port):
            if time.monotonic() - started > 60:
                raise SystemExit(f"{name} not ready in 60 s:\n{podman('logs', name)}")
            time.sleep(0.02)
        up = time.monotonic() - started
        started = time.monotonic()
        podman("stop", "--time", "30", name)
        return up, time.monotonic() - started
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            podman("rm", "--force", "--time", "0", name)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f} to {max(values):.2f})"


def main(argv: list[str]) -> int:
    """Build (or take) the image, start it ROUNDS times; print its size and times."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment image",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("--image", help="measure this image as it is (no build, kept)")
    ap.add_argument("--base", default=LOCAL_BASE,
                    help=f"build from this base (default {LOCAL_BASE}, made if missing)")
    ap.add_argument("--rounds", type=int, default=5, metavar="ROUNDS")
    args = ap.parse_args(argv)
    image = args.image or TAG
    try:
        if not args.image:
            started = time.monotonic()
            made = args.base == LOCAL_BASE and make_base()
            based = time.monotonic()
            build(args.base, TAG)
            print(f"base {args.base}: {'made in %.0f s' % (based - started) if made else 'cached'}"
                  f"; build: {time.monotonic() - based:.0f} s")
            print(f"base size: {size_mb(args.base):.0f} MB")
        print(f"image size: {size_mb(image):.0f} MB")
        times = [one_start(image) for _ in range(args.rounds)]
        print(f"start to /readyz 200: {spread([up for up, _ in times])}, "
              f"podman stop: {spread([down for _, down in times])} ({args.rounds} rounds)")
    finally:
        if not args.image:
            subprocess.run(["podman", "rmi", "--force", TAG], capture_output=True)
    return 0

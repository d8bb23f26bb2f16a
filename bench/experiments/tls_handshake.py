"""What a TLS handshake costs the instance: a new connection for every request.

The load tool keeps its connections alive, so over HTTPS it measures the encryption of each
request and response, not the handshake. This starts one instance over HTTP and one over
HTTPS (a certificate made with the ``openssl`` CLI in a temporary directory), interleaved,
``--rounds`` times, and loads each with ``wrk -t1 -c8 -d5s -H 'Connection: close'`` on
``GET /healthz``: every request is a new TCP connection, and over HTTPS a full handshake
(no session resumption). It prints the rate and the instance's own CPU time per request
(``/proc/PID/stat``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

from bench import procs
from bench.instance import taskrunner


def cpu_seconds(pid: int) -> float:
    """The process's own user + system time (not its children's)."""
    fields = procs.stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / procs.TICK


def make_certificate(directory: str) -> list[str]:
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return ["--certfile", cert, "--keyfile", key]


def one_round(scheme: str, tls: list[str], duration: int, log_path: Path) -> str:
    with taskrunner(tls if scheme == "https" else [], log_path) as instance:
        before = cpu_seconds(instance.pid)
        out = subprocess.run(["wrk", "-t1", "-c8", f"-d{duration}s", "-H",
                              "Connection: close",
                              f"{scheme}://127.0.0.1:{instance.port}/healthz"],
                             capture_output=True, text=True, timeout=duration + 60).stdout
        used = cpu_seconds(instance.pid) - before
    found = re.search(r"(\d+) requests in", out)
    if not found:
        raise SystemExit(f"wrk said:\n{out}")
    n = int(found.group(1))
    errors = re.search(r"Socket errors.*", out)
    return (f"{scheme:5} {n / duration:6.0f} req/s  server CPU {used:5.2f} s  "
            f"{used / n * 1e6:5.0f} us/request" + (f"  ({errors.group(0)})" if errors else ""))


def main(argv: list[str]) -> int:
    """Alternate HTTP and HTTPS for ``--rounds``; one line per run."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment tls_handshake",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds of wrk per run")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tls = make_certificate(tmp)
        print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
        for i in range(a.rounds):
            for scheme in ("http", "https"):
                line = one_round(scheme, tls, a.duration, Path(tmp) / f"{scheme}-{i}.log")
                print(f"round {i + 1} {line}", flush=True)
        print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    return 0

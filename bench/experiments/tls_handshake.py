"""What a TLS handshake costs the instance: a new connection for every request.

``scripts/bench`` keeps its connections alive, so over HTTPS it measures the encryption of
each request and response, not the handshake. This starts one instance over HTTP and one
over HTTPS (a certificate made with the ``openssl`` CLI in a temporary directory),
interleaved, ``--rounds`` times, and loads each with
``wrk -t1 -c8 -d5s -H 'Connection: close'`` on ``GET /healthz``: every request is a new
TCP connection, and over HTTPS a full handshake (no session resumption). It prints the
rate and the instance's own CPU time per request (``/proc/PID/stat``).

Usage: python3 scripts/bench_tls_handshake.py [--port 19591] [--rounds 3] [--duration 5]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_certificate(directory: str) -> list[str]:
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return ["--certfile", cert, "--keyfile", key]


def one_round(scheme: str, tls: list[str], port: int, duration: int, log_path: str) -> str:
    with open(log_path, "w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "taskrunner", "--port", str(port),
                                 *(tls if scheme == "https" else [])], cwd=REPO,
                                stdout=log, stderr=log, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while "listening on" not in read(log_path):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"instance did not start:\n{read(log_path)}")
                time.sleep(0.05)
            before = cpu_seconds(proc.pid)
            out = subprocess.run(["wrk", "-t1", "-c8", f"-d{duration}s", "-H",
                                  "Connection: close", f"{scheme}://127.0.0.1:{port}/healthz"],
                                 capture_output=True, text=True, timeout=duration + 60).stdout
            used = cpu_seconds(proc.pid) - before
        finally:
            proc.terminate()
            proc.wait(30)
    found = re.search(r"(\d+) requests in", out)
    if not found:
        raise SystemExit(f"wrk said:\n{out}")
    n = int(found.group(1))
    errors = re.search(r"Socket errors.*", out)
    return (f"{scheme:5} {n / duration:6.0f} req/s  server CPU {used:5.2f} s  "
            f"{used / n * 1e6:5.0f} us/request" + (f"  ({errors.group(0)})" if errors else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=19591)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tls = make_certificate(tmp)
        print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
        for i in range(a.rounds):
            for scheme in ("http", "https"):
                print(f"round {i + 1} " + one_round(scheme, tls, a.port, a.duration,
                                                    os.path.join(tmp, "instance.log")),
                      flush=True)
        print(f"load average {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()

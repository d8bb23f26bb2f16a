"""The workloads (W1-W3 as in ../shared/bench, plus J0 and J1 for jobs) and their contract checks.

Before a workload is loaded, one request checks that the server does what the workload
assumes (status 0; for W3 exactly 1 MiB of stdout; for J0 and J1 a 202 with ``Location: /jobs/<id>``
and a poll that ends in ``exited``). A server that fails the check is not loaded.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import wrk

W3_BYTES = 1048576
# The same file the shared harness's setup.sh writes, so both measure the same W3.
W3_FILE = Path("/tmp/bench-1mib.txt")
_W3_LINE = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ01\n"


@dataclass(frozen=True)
class Workload:
    """One load: what to send, where, how many connections, and which wrk script."""

    name: str
    description: str
    path: str
    body: dict[str, Any] = field(hash=False)
    conns: int
    lua: Path

    @property
    def body_json(self) -> str:
        """The request body as wrk sends it."""
        return json.dumps(self.body)


TRUE = {"args": ["true"], "timeout": 3}
WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("W1", "spawn-bound: true", "/run", TRUE, 32, wrk.POST_LUA),
    Workload("W2", "concurrency: sleep 0.5", "/run",
             {"args": ["sleep", "0.5"], "timeout": 3}, 200, wrk.POST_LUA),
    Workload("W3", "output: 1 MiB of stdout", "/run",
             {"args": ["head", "-c", str(W3_BYTES), str(W3_FILE)], "timeout": 10}, 8,
             wrk.POST_LUA),
    # J0 is W1 with jobs instead of /run (issue 3's store check); J1 is a job's whole life.
    Workload("J0", "jobs: POST /jobs true, submit only", "/jobs", TRUE, 32, wrk.POST_LUA),
    Workload("J1", "jobs: POST /jobs true, poll to the end", "/jobs", TRUE, 32, wrk.JOBS_LUA),
)}


def ensure_w3_file() -> None:
    """Write the 1 MiB text file W3 prints, unless it is already there."""
    if W3_FILE.exists() and W3_FILE.stat().st_size == W3_BYTES:
        return
    data = (_W3_LINE * (W3_BYTES // len(_W3_LINE) + 1))[:W3_BYTES]
    tmp = W3_FILE.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(W3_FILE)


# An https:// target is this machine's own instance, usually with a self-signed
# certificate: the checks ask whether it answers by the contract, not who it is (wrk does
# not check certificates either).
# (A bare context, not create_default_context(): loading the CA bundle would cost every
# start of the tool a tenth of a second, for certificates that are never checked.)
_LOOPBACK_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_LOOPBACK_TLS.check_hostname = False
_LOOPBACK_TLS.verify_mode = ssl.CERT_NONE


def request(method: str, url: str, body: dict[str, Any] | None = None,
            timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """One HTTP exchange: status, headers, body (HTTP errors are answers, not exceptions)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=_LOOPBACK_TLS) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def check(wl: Workload, base: str) -> str:
    """One request that checks the contract: ``"ok"`` or ``"FAIL: why"``."""
    try:
        if wl.name in ("J0", "J1"):
            return _check_job(base, wl.body)
        status, _, data = request("POST", base + wl.path, wl.body)
        if status != 200:
            return f"FAIL: HTTP {status} {data[:200]!r}"
        return _check_result(wl, json.loads(data))
    except (OSError, ValueError) as exc:
        return f"FAIL: {type(exc).__name__}: {exc}"


def _check_result(wl: Workload, result: Any) -> str:
    if not isinstance(result, dict) or result.get("status") != 0 or result.get("timed_out"):
        return f"FAIL: result {str(result)[:200]}"
    if wl.name == "W3" and len(result.get("stdout", "")) != W3_BYTES:
        return f"FAIL: stdout has {len(result.get('stdout', ''))} chars, not {W3_BYTES}"
    return "ok"


def _check_job(base: str, body: dict[str, Any]) -> str:
    status, headers, data = request("POST", base + "/jobs", body)
    if status != 202:
        return f"FAIL: POST /jobs answered HTTP {status}, not 202"
    job = json.loads(data)
    location = headers.get("Location", "")
    if location != f"/jobs/{job.get('id')}":
        return f"FAIL: Location {location!r} is not /jobs/<id> of the job ({job.get('id')!r})"
    deadline = time.monotonic() + 10
    while job.get("state") == "running" and time.monotonic() < deadline:
        time.sleep(0.01)  # a one-off check, not the load: a short pause between polls
        status, _, data = request("GET", base + location)
        if status != 200:
            return f"FAIL: GET {location} answered HTTP {status}"
        job = json.loads(data)
    if job.get("state") != "exited" or job.get("status") != 0:
        return f"FAIL: job ended as state={job.get('state')!r} status={job.get('status')!r}"
    return "ok"

"""What the tests share besides fixtures: clients that check every answer against the
OpenAPI document, and waiting for a condition with a deadline (never a bare sleep).

The fixtures (`instance`, `spawn_instance`, `config`) are in conftest.py; stack helpers in
stackutil.py. Each test imports what it needs from here by name.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

from openapi_check import checker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def post_run_blocking(port: int, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
    """``POST /run`` on a fresh connection, without an event loop: status and JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/run", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        body = response.read()
        checker().check("POST", "/run", response.status, response.headers, body)
        return response.status, json.loads(body)
    finally:
        conn.close()


TLS12_CBC = "ECDHE+AES:!AESGCM:!AESCCM"
"""Every ECDHE suite with AES in CBC mode (SHA-1 and SHA-2 MACs), as OpenSSL names them."""
TLS12_AEAD = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""Every ECDHE suite with AES-GCM or ChaCha20-Poly1305."""


def tls12_cipher(port: int, cafile: str, ciphers: str) -> str:
    """The suite a TLS 1.2 client offering only ``ciphers`` (OpenSSL's syntax; old ones
    allowed) agrees with ``127.0.0.1:port`` for ``localhost``; `ssl.SSLError` if the server
    takes none of them."""
    context = ssl.create_default_context(cafile=cafile)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    with (socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
          context.wrap_socket(raw, server_hostname="localhost") as tls):
        assert tls.version() == "TLSv1.2"
        return str(tls.cipher()[0])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``predicate`` until it returns something true, and return that; after
    ``timeout`` seconds return its last answer (false)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return predicate()


def wait_for(path, timeout=60):
    """A shell snippet that waits until ``path`` exists: a gate the test opens when it has
    seen what it waits for (at most ``timeout`` seconds, so a failed test leaves no waiter)."""
    return (f'i=0; while [ ! -e "{path}" ] && [ $i -lt {timeout * 100} ]; do sleep 0.01; '
            'i=$((i+1)); done')


async def submit(instance, body):
    response = await instance.request("POST", "/jobs", body)
    assert response.code == 202, response.body
    job = json.loads(response.body)
    assert response.headers["Location"] == f"/jobs/{job['id']}"
    return job


async def get_job(instance, job_id):
    response = await instance.request("GET", f"/jobs/{job_id}")
    assert response.code == 200, response.body
    return json.loads(response.body)


async def wait_done(instance, job_id, timeout=20.0):
    """Poll GET /jobs/<id> (as a client would) until the job has ended."""
    deadline = time.monotonic() + timeout
    while True:
        job = await get_job(instance, job_id)
        if job["state"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, f"job still running: {job}"
        await asyncio.sleep(0.02)


async def wait_gone(instance, job_id, timeout=20.0):
    deadline = time.monotonic() + timeout
    while (await instance.request("GET", f"/jobs/{job_id}")).code != 404:
        assert time.monotonic() < deadline, f"job {job_id} still kept"
        await asyncio.sleep(0.05)


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """In a test's event loop: wait until ``predicate()`` (a plain function, or a coroutine
    function, awaited) is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def sqlite_store(state_dir: str, instance: str, **settings):
    """The `JobStore` of ``instance`` over the SQLite index in ``state_dir`` (not opened)."""
    from taskrunner.jobs.backends.sqlite import SQLiteIndex
    from taskrunner.jobs.store import JobStore

    return JobStore(SQLiteIndex(state_dir), instance, **settings)


def processes_running(argument: str) -> list[int]:
    """Pids of the live (non-zombie) processes whose command line includes ``argument``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                words = f.read().split(b"\0")
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argument.encode() in words and state != "Z":
            found.append(int(name))
    return found


def closed_by_server(sock: socket.socket, wait: float) -> bool:
    """True if the server closed ``sock`` (an EOF or a reset) within ``wait`` seconds."""
    sock.settimeout(wait)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def https(port, method, path, cafile, body=None, headers=None, timeout=30.0):
    """One request over HTTPS to ``localhost:port``, trusting the certificate in ``cafile``
    only."""
    conn = http.client.HTTPSConnection("localhost", port, timeout=timeout,
                                       context=ssl.create_default_context(cafile=cafile))
    try:
        conn.request(method, path, None if body is None else json.dumps(body),
                     headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()

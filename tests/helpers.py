"""What the tests share besides fixtures: clients that check every answer against the
OpenAPI document, and waiting for a condition with a deadline (never a bare sleep).

The fixtures (`instance`, `spawn_instance`, `config`, `reachable_runtime`) are in conftest.py;
stack helpers in stackutil.py. Each test imports what it needs from here by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import http.server
import importlib.metadata
import json
import logging
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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

@dataclass(frozen=True)
class Runtime:
    """What another user (``nobody``) runs taskrunner with: the checkout and its virtual
    environment may be where only root goes (a clone in root's home, mode 0700), and a
    process of nobody's may neither exec nor import from there. ``path`` is one directory
    every user may read, holding a copy of the package, the lab, the doors in ``scripts/``
    and the distributions of requirements/serve.txt as installed here; ``python`` is an
    interpreter nobody was seen to run, importing the package from ``path``."""

    python: str
    path: str

    def env(self) -> dict[str, str]:
        """The environment that makes `python` import from `path`."""
        return {"PYTHONPATH": self.path}


def build_runtime(directory: str, user: str = "nobody") -> Runtime:
    """Fill ``directory`` (made 0755) with the copies of `Runtime` and prove that ``user``
    (when we are root; else ourselves) can import the server from it."""
    os.chmod(directory, 0o755)
    skip = shutil.ignore_patterns("__pycache__")
    for part in ("taskrunner", "lab", "scripts"):
        shutil.copytree(os.path.join(REPO, part), os.path.join(directory, part), ignore=skip)
    for name in _serve_requirements():
        _copy_distribution(name, directory)
    for root, _, files in os.walk(directory):
        os.chmod(root, 0o755)
        for file in files:
            path = os.path.join(root, file)
            os.chmod(path, os.stat(path).st_mode & 0o777 | 0o444)
    probes = []
    for python in _interpreters():
        try:
            probe = _as_user(user, [python, "-c", "import taskrunner.server, psycopg_pool"],
                             env={**os.environ, "PYTHONPATH": directory})
        except PermissionError as e:  # the exec itself: a directory on its path is closed
            probes.append(f"{python}: {e.strerror}")
            continue
        if probe.returncode == 0:
            return Runtime(python, directory)
        probes.append(f"{python}: {probe.stderr.strip()[-300:]}")
    raise RuntimeError(f"{user} can run no interpreter of this Python version that imports "
                       "the copied package: " + "; ".join(probes))


def _serve_requirements() -> list[str]:
    with open(os.path.join(REPO, "requirements", "serve.txt")) as f:
        return re.findall(r"^([A-Za-z0-9_.-]+)==", f.read(), re.MULTILINE)


def _copy_distribution(name: str, directory: str) -> None:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return  # its marker left it out here (tzdata: Windows only)
    for file in dist.files or ():
        if file.parts[0] == "..":  # a console script in the environment's bin/
            continue
        target = os.path.join(directory, *file.parts)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(str(dist.locate_file(file)), target)


def _interpreters() -> list[str]:
    # Ours first (a virtual environment's python is a link to it); else the system's
    # interpreter of the same version, which loads the same compiled extensions. A copy of
    # ours would not do: a shared build finds libpython by an absolute RUNPATH, in the
    # place nobody may enter.
    version = "python{}.{}".format(*sys.version_info[:2])
    found = [os.path.realpath(getattr(sys, "_base_executable", sys.executable))]
    for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
        candidate = os.path.join(directory, version)
        if os.path.exists(candidate) and os.path.realpath(candidate) not in found:
            found.append(os.path.realpath(candidate))
    return found


def _as_user(user: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # As ``user`` (no other group) when we are root, else as ourselves; from ``/``: what
    # runs as another user must not need the working directory either.
    ids: dict[str, Any] = {}
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        ids = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    return subprocess.run(argv, cwd="/", env=env, capture_output=True, text=True, timeout=60,
                          check=False, **ids)


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler],
            address: str = "127.0.0.1") -> Iterator[str]:
    """A threaded ``http.server`` of ``handler`` on ``address`` and a free port, for as long
    as the block lasts; yields its base URL. Stopped and closed at the end, even on failure."""
    server = http.server.ThreadingHTTPServer((address, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def access_lines(stream: Any) -> list[dict[str, Any]]:
    """The access log's records among the JSON lines of ``stream`` (the `log_stream`
    fixture's), after the handlers wrote what they batch (up to 0.1 s)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [r for r in records if r["logger"] == "taskrunner.access"]


def token_sha256(token: str) -> str:
    """A token as a callers file names it (``token_sha256``)."""
    return hashlib.sha256(token.encode()).hexdigest()

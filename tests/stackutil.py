"""Helpers for the stack tests: drive ``scripts/stack`` and put a steady load through nginx.

The stacks of the tests listen on unusual ports (nginx 18080/18180/18280, instances from
18885/18985/19085) and keep their runtime files in a temporary run directory, so they do
not collide with a developer's stack on 8080/8885-8888.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK = os.path.join(REPO, "scripts", "stack")


def needs_stack() -> pytest.MarkDecorator:
    """Skip without nginx or supervisor on a developer's machine; under CI (``CI`` set),
    where scripts/install provides both, run anyway so that a missing install fails."""
    missing = not (nginx_available() and supervisor_available())
    return pytest.mark.skipif(missing and not os.environ.get("CI"),
                              reason="needs nginx and supervisor: scripts/install")


def nginx_available() -> bool:
    return bool(shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"))


def supervisor_available() -> bool:
    try:
        import supervisor  # noqa: F401
    except ImportError:
        return False
    return True


class Stack:
    """One stack started by ``scripts/stack`` with its own ports and run directory."""

    def __init__(self, run_dir: str, port: int, base_port: int, args: str = "",
                 state_dir: str = "", env: dict[str, str] | None = None) -> None:
        self.run_dir = run_dir
        self.port = port
        self.ports = [base_port + i for i in range(4)]
        self.env = {
            **os.environ,
            "PYTHON": sys.executable,
            "TASKRUNNER_PORT": str(port),
            "TASKRUNNER_BASE_PORT": str(base_port),
            "TASKRUNNER_RUN_DIR": run_dir,
            "TASKRUNNER_ARGS": args,
            "TASKRUNNER_STATE_DIR": state_dir,
            **(env or {}),
        }

    def script(self, command: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([STACK, command], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def up(self) -> None:
        done = self.script("up")
        assert done.returncode == 0, f"stack up failed:\n{done.stdout}\n{done.stderr}"

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.script("down")

    def ctl(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c",
             os.path.join(self.run_dir, "supervisord.conf"), *args],
            capture_output=True, text=True, timeout=30, check=False)
        return done.stdout

    def pidfile(self, name: str) -> int | None:
        try:
            with open(os.path.join(self.run_dir, name)) as f:
                return int(f.read().strip())
        except (FileNotFoundError, ValueError):
            return None

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.run_dir, "log", name), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def instance_log(self, port: int) -> str:
        return self.log(f"taskrunner_{port}.log")

    def health(self, port: int) -> dict[str, Any] | None:
        """The instance's /healthz, asked directly (with the stack's token, if it has one:
        else only the status), or None if it does not answer."""
        token = self.env.get("TASKRUNNER_TOKEN", "")
        try:
            status, _, body = request("127.0.0.1", port, "GET", "/healthz", timeout=2,
                                      headers={"Authorization": f"Bearer {token}"}
                                      if token else None)
        except OSError:
            return None
        return json.loads(body) if status == 200 else None

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request through nginx."""
        return request("127.0.0.1", self.port, method, path, body, headers)


def request(host: str, port: int, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None,
            timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
            if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


@dataclass
class Outcome:
    """One request of a load: when it started and ended (monotonic), and its answer."""

    rid: str
    start: float
    end: float
    status: int
    body: bytes


class Load:
    """``workers`` threads, each sending ``POST /run`` with ``body`` back to back over one
    keep-alive connection to nginx (``fresh``: a new connection for each), until `stop`."""

    def __init__(self, port: int, body: dict[str, Any], workers: int = 8,
                 name: str = "load", headers: dict[str, str] | None = None,
                 fresh: bool = False) -> None:
        self.fresh = fresh
        self.port = port
        self.payload = json.dumps(body).encode()
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.workers = workers
        self.name = name
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(i,), daemon=True)
                         for i in range(workers)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        return self.outcomes

    def _work(self, worker: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        n = 0
        while not self._stop.is_set():
            n += 1
            rid = f"{self.name}-{worker}-{n}"
            start = time.monotonic()
            try:
                conn.request("POST", "/run", body=self.payload,
                             headers={**self.headers, "X-Request-Id": rid})
                response = conn.getresponse()
                status, body = response.status, response.read()
            except (OSError, http.client.HTTPException) as exc:
                status, body = 0, repr(exc).encode()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            with self._lock:
                self.outcomes.append(Outcome(rid, start, time.monotonic(), status, body))
            if self.fresh:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.close()


def upstream_of(nginx_log: str, rid: str) -> str | None:
    """The upstream address nginx's access log names for the request ``rid``."""
    for line in nginx_log.splitlines():
        if f"rid={rid} " in line:
            return line.split(" upstream=", 1)[1].split(" ", 1)[0]
    return None


@contextlib.contextmanager
def running_stack(tmp_dir: str, port: int, base_port: int, args: str = "",
                  state_dir: str = "", env: dict[str, str] | None = None) -> Iterator[Stack]:
    """A stack that is up for the duration of the block and down after it, even on failure."""
    stack = Stack(tmp_dir, port, base_port, args, state_dir, env)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()

"""The container image in the tests: built once per session from the local base, run with
podman, asked over HTTP from the host, and removed.

The image is built (lab/image.py) from the local Debian base that ``mmdebstrap`` makes,
kept in the podman store between sessions (it costs a minute or two once), as `IMAGE`, a
name that stays: the Kubernetes tests play it. `image_session` holds `SESSION_LOCK` from the
build to the removal, so two test sessions on one machine (the store is the machine's) never
remove the image under each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from openapi_check import checker

from lab.image import LOCAL_BASE, build, locked, make_base

IMAGE = "localhost/taskrunner:test"
SESSION_LOCK = "/tmp/taskrunner-image-session.lock"
TOKEN = "image-test-token-4f1c2a9e7b"
CONTAINER_PREFIX = "taskrunner-test-"
"""Every container the tests run is named so: one left by a killed session is found."""


@dataclass
class Timings:
    """Seconds the session spent on the base (0 when it was in the store) and the build."""

    base: float
    build: float


def tools_missing() -> str:
    """What of podman, runc and mmdebstrap is missing ('' if none)."""
    return " ".join(t for t in ("podman", "runc", "mmdebstrap") if shutil.which(t) is None)


def skip_without_podman() -> None:
    """Skip on a developer's machine without the tools; under CI (``CI`` set), where
    scripts/install provides them, go on so that a missing install fails."""
    missing = tools_missing()
    if missing and not os.environ.get("CI"):
        pytest.skip(f"needs {missing}: scripts/install")


def podman(*args: str, check: bool = True,
           timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS``; with ``check``, fail the test with podman's own words."""
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"podman {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return done


@contextlib.contextmanager
def image_session() -> Iterator[Timings]:
    """Build `IMAGE` (and the base, if the store lacks it) and remove it afterwards."""
    with locked(SESSION_LOCK):
        started = time.monotonic()
        make_base()
        based = time.monotonic()
        try:
            build(LOCAL_BASE, IMAGE)
            yield Timings(based - started, time.monotonic() - based)
        finally:
            _remove_containers()
            podman("rmi", "--force", IMAGE, check=False)


def _remove_containers() -> None:
    listed = podman("ps", "--all", "--format", "{{.Names}}", check=False).stdout.split()
    names = [n for n in listed if n.startswith(CONTAINER_PREFIX)]
    if names:
        podman("rm", "--force", "--time", "0", *names, check=False)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (podman binds it again, so a race is possible but
    the window is a few milliseconds)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Container:
    """One container of the image, published on ``127.0.0.1:port``."""

    name: str
    port: int
    started: float
    """`time.monotonic` just before ``podman run``."""

    def request(self, method: str, path: str, body: Any = None, token: str | None = TOKEN,
                timeout: float = 30.0) -> tuple[int, Any]:
        """The status and the JSON body of one request (the Host is 127.0.0.1:port),
        checked against the OpenAPI document."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                         headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, headers, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            with error:
                status, headers, raw = error.code, error.headers, error.read()
        checker().check(method, path, status, headers, raw)
        return status, json.loads(raw)

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200 (False while the port does not answer yet)."""
        try:
            return self.request("GET", "/readyz", token=None, timeout=2.0)[0] == 200
        except (OSError, ValueError):  # refused, reset, an empty reply while podman starts
            return False

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Wait for ``/readyz`` 200; the seconds since ``podman run``."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            state = podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()
            if state != "running" or time.monotonic() > deadline:
                logs = podman("logs", self.name, check=False)
                pytest.fail(f"{self.name} not ready ({state}):\n{logs.stdout}{logs.stderr}")
            time.sleep(0.05)
        return time.monotonic() - self.started

    def exit_code(self) -> int:
        """The container's exit status, once it has stopped."""
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout)

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr


@contextlib.contextmanager
def running(image: str = IMAGE, *run_args: str, args: tuple[str, ...] = (),
            token: str | None = TOKEN) -> Iterator[Container]:
    """A container of ``image`` with ``token`` (TASKRUNNER_TOKEN), its port 8080 published
    on a free loopback port; ``run_args`` go to ``podman run``, ``args`` replace the image's
    CMD. Removed at the end, whatever happened."""
    name = CONTAINER_PREFIX + uuid.uuid4().hex[:8]
    port = free_port()
    environment = () if token is None else ("--env", f"TASKRUNNER_TOKEN={token}")
    started = time.monotonic()
    podman("run", "--detach", "--name", name, "--publish", f"127.0.0.1:{port}:8080",
           *environment, *run_args, image, *args)
    try:
        yield Container(name, port, started)
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)

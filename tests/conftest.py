"""Shared fixtures: a real instance in this process, or one in a child process.

`instance` runs a `Server` on the test's own IOLoop on an ephemeral port (fast, lets a test
look inside); `spawn_instance` starts ``python -m taskrunner`` as a real child process (for
signals, exit codes, and what survives a kill). Both are torn down even when a test fails,
and both kill whatever commands they left running.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from helpers import PY, REPO, Runtime, build_runtime, wait_until
from imageutil import IMAGE, Timings, image_session, skip_without_podman
from openapi_check import checker
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from lab.pgserver import PgServer  # the server scripts/cluster runs
from taskrunner.config import Config
from taskrunner.logs import setup_logging
from taskrunner.server import Server


@pytest.fixture
def config() -> Config:
    """The config of the `instance` fixture; override this fixture to change settings."""
    return Config(port=0, grace=2.0)


class Instance:
    """A running in-process instance and a small JSON client for it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.port = server.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = AsyncHTTPClient(force_instance=True, max_clients=500)

    @property
    def ctx(self) -> Any:
        return self.server.ctx

    async def request(self, method: str, path: str, body: Any = None, *,
                      raw: bytes | None = None, headers: dict[str, str] | None = None,
                      timeout: float = 30.0, **kwargs: Any) -> HTTPResponse:
        """Send a request; never raises on an HTTP error status.

        Every response is checked against taskrunner/web/openapi.json (see tests/openapi_check.py).
        """
        return await checked_fetch(self.client, self.url, method, path, body, raw=raw,
                                   headers=headers, timeout=timeout, **kwargs)

    async def run(self, body: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """POST /run and return (status code, decoded JSON body)."""
        response = await self.request("POST", "/run", body, **kwargs)
        return response.code, json.loads(response.body)


async def checked_fetch(client: AsyncHTTPClient, base_url: str, method: str, path: str,
                        body: Any = None, *, raw: bytes | None = None,
                        headers: dict[str, str] | None = None, timeout: float = 30.0,
                        streaming_callback: Callable[[bytes], None] | None = None,
                        **kwargs: Any) -> HTTPResponse:
    """Fetch ``base_url + path``, then check the response against the OpenAPI document.

    With a ``streaming_callback`` the body goes to it as it arrives, and what arrived in all
    is checked at the end.
    """
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if data is None and method in ("POST", "PUT"):
        data = b""
    received: list[bytes] = []
    if streaming_callback is not None:
        callback = streaming_callback

        def streaming_callback(chunk: bytes) -> None:
            received.append(chunk)
            callback(chunk)

    response = await client.fetch(
        base_url + path, method=method, body=data, headers=headers,
        raise_error=False, request_timeout=timeout, allow_nonstandard_methods=True,
        streaming_callback=streaming_callback, **kwargs,
    )
    if response.code != 599:  # 599: no HTTP response at all (e.g. a client-side timeout)
        content = b"".join(received) if streaming_callback is not None else response.body
        checker().check(method, path, response.code, response.headers, content or b"")
    return response


@pytest.fixture
def instance(io_loop: Any, config: Config) -> Iterator[Instance]:
    """A real instance on an ephemeral port, served by this test's IOLoop."""
    server = Server(config, handle_signals=False)
    io_loop.run_sync(server.startup)
    inst = Instance(server)
    try:
        yield inst
    finally:
        inst.client.close()
        server.ctx.engine.kill_all()  # type: ignore[union-attr]
        io_loop.run_sync(server.shutdown, timeout=30)


def with_config(**changes: Any) -> Any:
    """Decorator: run a test against an `instance` built with these config changes."""
    return pytest.mark.parametrize("config", [replace(Config(port=0, grace=2.0), **changes)],
                                   ids=["config"])


class ChildInstance:
    """``python -m taskrunner`` running as a child process in its own process group; with a
    `Runtime`, its interpreter and copy of the package, from ``/``."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 wrapper: list[str] | None = None, runtime: Runtime | None = None) -> None:
        self.log_path = f"/tmp/taskrunner-test-{os.getpid()}-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w+b")  # noqa: SIM115 - closed in stop()
        python, cwd = (PY, REPO) if runtime is None else (runtime.python, "/")
        self.proc = subprocess.Popen(
            [*(wrapper or []), python, "-m", "taskrunner", *args], cwd=cwd, stdout=self.log,
            stderr=self.log, start_new_session=True,
            env={**os.environ, **(runtime.env() if runtime else {}), **(env or {})},
        )
        self.port = self._wait_for_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def _wait_for_port(self, timeout: float = 20.0) -> int:
        def port() -> int | None:
            match = re.search(r"listening on \S+:(\d+)", self.output())
            if not match and self.proc.poll() is not None:
                raise RuntimeError(f"instance exited early:\n{self.output()}")
            return int(match.group(1)) if match else None

        found = wait_until(port, timeout)
        if found is None:
            raise RuntimeError(f"instance did not start:\n{self.output()}")
        return int(found)

    async def request(self, method: str, path: str, body: Any = None,
                      **kwargs: Any) -> HTTPResponse:
        """Like `Instance.request`, against this child; the response is checked the same way."""
        client = AsyncHTTPClient(force_instance=True)
        try:
            return await checked_fetch(client, self.url, method, path, body, **kwargs)
        finally:
            client.close()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.log_path)


@pytest.fixture
def spawn_instance() -> Iterator[Callable[..., ChildInstance]]:
    """Start ``python -m taskrunner --port 0 ARGS...`` as a child; all are stopped at teardown."""
    started: list[ChildInstance] = []

    def start(*args: str, env: dict[str, str] | None = None, wrapper: list[str] | None = None,
              runtime: Runtime | None = None) -> ChildInstance:
        """``wrapper`` (e.g. ``["prlimit", "--nofile=64"]``) execs the instance; give the
        `reachable_runtime` when the wrapper makes it another user."""
        child = ChildInstance(["--port", "0", *args], env=env, wrapper=wrapper,
                              runtime=runtime)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


@pytest.fixture(scope="session")
def reachable_runtime() -> Iterator[Runtime]:
    """A `Runtime` for what a test runs as another user (``nobody``): copies of the package
    and its dependencies that user may read, built once a session under /tmp (pytest's own
    temporary directories are 0700) and removed at its end. Never loosen the checkout's
    modes instead: it may be in a user's home."""
    import tempfile

    directory = tempfile.mkdtemp(prefix="taskrunner-runtime-", dir="/tmp")
    try:
        yield build_runtime(directory)
    finally:
        shutil.rmtree(directory)


class Certificate:
    """A self-signed certificate for ``localhost`` and 127.0.0.1 and its key, in PEM files
    made by the ``openssl`` CLI (Debian's ``openssl``, which scripts/install brings)."""

    def __init__(self, directory: str, name: str = "server", key: str = "ec") -> None:
        self.cert = os.path.join(directory, f"{name}.crt")
        self.key = os.path.join(directory, f"{name}.key")
        newkey = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if key == "ec"
                  else ["-newkey", key])
        subprocess.run(
            ["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", self.key,
             "-out", self.cert, "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True, timeout=60)

    def client_context(self) -> Any:
        """An `ssl.SSLContext` that trusts this certificate only and checks the host name."""
        import ssl
        return ssl.create_default_context(cafile=self.cert)


def unique_sleep() -> str:
    """A `sleep` argument no other process on this machine has, to find it in /proc by."""
    return f"{1000 + uuid.uuid4().int % 100000}.{uuid.uuid4().int % 10**6:06d}"


def processes_with(text: str) -> list[int]:
    """The pids whose command line contains ``text`` (seen from the host's PID namespace)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(name))
            except OSError:
                continue  # gone meanwhile
    return found


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server (Debian's, brought by scripts/install) for this test session,
    in a throwaway directory under /tmp, removed at the end even if tests failed. Its role
    ``taskrunner`` is no superuser and logs in with a password, which this session (and the
    instances it starts) find in the server's PGPASSFILE: no URL carries it."""
    import tempfile

    directory = tempfile.mkdtemp(prefix="taskrunner-pg-", dir="/tmp")
    os.chmod(directory, 0o755)  # the server's own user must reach its data directory
    # A port the kernel has free now: one made of our pid collided with another session's.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = PgServer(os.path.join(directory, "pg"), port=port)
    before = os.environ.get("PGPASSFILE")
    try:
        server.start()
        os.environ["PGPASSFILE"] = server.pgpass
        yield server
    finally:
        if before is None:
            os.environ.pop("PGPASSFILE", None)
        else:
            os.environ["PGPASSFILE"] = before
        server.remove()
        os.rmdir(directory)


@pytest.fixture
def state_url(postgres: Any) -> Iterator[str]:
    """The URL (no password in it) of a new, empty database on the session's server, owned
    by the role ``taskrunner``; dropped after the test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.admin, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} OWNER taskrunner")
    yield postgres.url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres.admin, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def state_url_file(postgres: Any, state_url: str, tmp_path: Any) -> str:
    """A ``--state-url-file`` (mode 0600) holding `state_url` with its password."""
    path = tmp_path / "state-url"
    database = state_url.rsplit("/", 1)[1]
    path.write_text(postgres.url_with_password(database) + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_index(request: pytest.FixtureRequest, tmp_path: Any) -> list[str]:
    """The flags of a job index that several instances share: one SQLite file, or a
    PostgreSQL database (its URL, password included, in a ``--state-url-file``)."""
    if request.param == "sqlite":
        return ["--state-dir", str(tmp_path / "state")]
    return ["--state-url-file", request.getfixturevalue("state_url_file")]


# The container image, built once for the session's tests that take `taskrunner_image`
# (tests/imageutil.py says how), and removed after them; the local base stays cached.
@pytest.fixture(scope="session")
def image_build() -> Iterator[Timings]:
    """The seconds the session spent making the base and building the image."""
    skip_without_podman()
    with image_session() as timings:
        yield timings


@pytest.fixture(scope="session")
def taskrunner_image(image_build: Timings) -> str:
    """The name of the image built from this checkout (``localhost/taskrunner:test``)."""
    return IMAGE


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Capture every log record as JSON lines, and remove the handler afterwards."""
    stream = io.StringIO()
    handler = setup_logging("json", stream=stream)
    yield stream
    logging.getLogger().removeHandler(handler)

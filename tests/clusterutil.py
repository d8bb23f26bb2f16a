"""Helpers for the cluster tests: drive ``scripts/cluster`` with names, addresses and ports of
the test's own, and talk to the cluster through its front or to one instance directly.

A test cluster's namespaces and devices carry a prefix made from the test process's pid,
on a subnet of its own, so that neither collides with a developer's cluster (``trc``,
10.77.0.0/16); its ports are the tests' (front 19690, instances from 18900, PostgreSQL
555xx), and its run directory a temporary one under /tmp (PostgreSQL's user must be able
to reach it). `running_cluster` always runs ``down``, and after it removes whatever of its
prefix is left.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from stackutil import REPO, nginx_available, supervisor_available

from lab.netns import Net, available
from lab.pgserver import PgServer

CLUSTER = os.path.join(REPO, "scripts", "cluster")

FRONT_PORT = 19690
FIRST_PORT = 18900


def needs_cluster() -> pytest.MarkDecorator:
    """Skip, saying why, where namespaces cannot be made (not root, no ``ip netns``); a
    missing nginx, supervisor or PostgreSQL skips only outside CI, where scripts/install
    provides them."""
    why = available()
    if why is None and not os.environ.get("CI"):
        missing = [name for name, ok in [
            ("nginx", nginx_available()), ("supervisor", supervisor_available()),
            ("PostgreSQL", bool(_pg_bin()))] if not ok]
        if missing:
            why = f"needs {', '.join(missing)}: scripts/install"
    return pytest.mark.skipif(why is not None, reason=f"a cluster {why}")


def _pg_bin() -> str:
    import glob
    found = glob.glob("/usr/lib/postgresql/*/bin/postgres")
    return found[0] if found else ""


def test_net(tag: str) -> Net:
    """A prefix and a /16 of this test process's own (``tag``: one letter per module)."""
    pid = os.getpid()
    return Net(f"t{tag}{pid % 100000}", f"10.{150 + pid % 100}.0.0/16")


class Cluster:
    """One cluster started by ``scripts/cluster up`` with the test's names and ports."""

    def __init__(self, tag: str, hosts: int = 2, instances: int = 2, lost_after: float = 3,
                 pg_port: int = 55510) -> None:
        self.net = test_net(tag)
        self.run_dir = tempfile.mkdtemp(prefix="taskrunner-cluster-", dir="/tmp")
        os.chmod(self.run_dir, 0o755)  # PostgreSQL runs as postgres, in run_dir/pg
        self.port = FRONT_PORT
        self.up_args = ["--hosts", str(hosts), "--instances", str(instances),
                        "--port", str(FRONT_PORT), "--first-port", str(FIRST_PORT),
                        "--pg-port", str(pg_port), "--prefix", self.net.prefix,
                        "--subnet", self.net.subnet, "--lost-after", f"{lost_after:g}"]
        self.token = ""
        self.pg_port = pg_port

    @property
    def index(self) -> PgServer:
        """The cluster's PostgreSQL, to stop and start it."""
        return PgServer(os.path.join(self.run_dir, "pg"), self.pg_port,
                        self.net.index_address, allow=self.net.subnet)

    def script(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHON": sys.executable}
        return subprocess.run([CLUSTER, *args, "--run-dir", self.run_dir], env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def up(self) -> None:
        done = self.script("up", *self.up_args)
        assert done.returncode == 0, f"cluster up failed:\n{done.stdout}\n{done.stderr}"
        with open(os.path.join(self.run_dir, "token")) as f:
            self.token = f.read().strip()

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.script("down")

    def status(self) -> dict[str, Any]:
        done = self.script("status", "--json")
        return json.loads(done.stdout)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def instances(self, host: str | None = None) -> list[tuple[str, str, int]]:
        """``(name, address, port)`` of every instance (of ``host``), from ``status``."""
        found = []
        for h in self.status()["hosts"]:
            if host is None or h["name"] == host:
                for i in h["instances"]:
                    address, port = i["address"].rsplit(":", 1)
                    found.append((i["name"], address, int(port)))
        return found

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None,
             timeout: float = 30) -> tuple[int, dict[str, str], Any]:
        """One request through the front, with the token; the body decoded if JSON."""
        return call("127.0.0.1", self.port, method, path, body,
                    {**self.auth, **(headers or {})}, timeout)

    def direct(self, address: str, port: int, method: str, path: str,
               body: Any = None) -> tuple[int, dict[str, str], Any]:
        """One request to an instance itself, with the token."""
        return call(address, port, method, path, body, self.auth)

    def log(self, *parts: str) -> str:
        try:
            with open(os.path.join(self.run_dir, *parts), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        """What ``down`` should have left: nothing. Remove whatever it did leave, and the run
        directory."""
        with contextlib.suppress(Exception):
            self.net.remove()
        with contextlib.suppress(Exception):
            self.index.stop(immediate=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def call(host: str, port: int, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None,
         timeout: float = 30) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        headers_ = dict(response.getheaders())
        try:
            decoded = json.loads(raw)
        except ValueError:
            decoded = raw
        return response.status, headers_, decoded
    finally:
        conn.close()


@contextlib.contextmanager
def running_cluster(tag: str, **kwargs: Any) -> Iterator[Cluster]:
    """A cluster that is up for the block and gone after it, even on failure."""
    cluster = Cluster(tag, **kwargs)
    try:
        cluster.up()
        yield cluster
    finally:
        if os.path.exists(os.path.join(cluster.run_dir, "cluster.json")):
            cluster.down()
        cluster.cleanup()

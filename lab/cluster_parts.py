"""The parts of a local cluster (scripts/cluster) and their lifecycles: a host (its
supervisord and instances, inside the host's network namespace), the front (nginx in the
root namespace) and the job index (PostgreSQL, lab/pgserver.py).

Every file of a cluster is under its run directory (`Layout`). Processes are found by what
they are, never by a pid file alone: a host's are the processes of its namespace
(``ip netns pids``), the front's are the nginx whose command line names the front's config
(lab/procs.py), the index's is what pg_ctl knows of its data directory.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from lab import procs
from lab.netns import Net
from lab.pgserver import PgServer
from lab.stack_settings import nginx_binary
from taskrunner.deploy import inventory as inv
from taskrunner.deploy import nginx, supervisord
from taskrunner.deploy.settings import STOP_WAIT

HOST_STOP = STOP_WAIT + 10.0
"""Seconds for a host's supervisord to stop its instances (its stopwaitsecs, and a margin)."""


@dataclass(frozen=True)
class Layout:
    """Where the files of the cluster in ``run_dir`` are."""

    run_dir: str

    @property
    def state(self) -> str:
        return os.path.join(self.run_dir, "cluster.json")

    @property
    def inventory(self) -> str:
        return os.path.join(self.run_dir, "cluster.toml")

    @property
    def token(self) -> str:
        return os.path.join(self.run_dir, "token")

    @property
    def pg(self) -> str:
        return os.path.join(self.run_dir, "pg")

    @property
    def front(self) -> str:
        return os.path.join(self.run_dir, "front")

    def host(self, name: str) -> str:
        return os.path.join(self.run_dir, "hosts", name)


def get(address: str, port: int, path: str, timeout: float = 2.0,
        token: str = "") -> tuple[int, Any]:
    """``GET path`` of ``address:port`` (with ``token``, if any): status and decoded JSON
    body."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def read_token(path: str) -> str:
    """The token in the file ``path``, surrounding whitespace stripped; "" without one (no
    file named, or one this user cannot read)."""
    if not path:
        return ""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def health(instance: inv.Instance, token: str = "") -> dict[str, Any] | None:
    """The instance's ``/healthz``, or None if it does not answer 200. Without a valid
    ``token`` an instance that has one answers its status only (no pid, no version)."""
    try:
        status, body = get(instance.address, instance.port, "/healthz", token=token)
    except (OSError, ValueError, http.client.HTTPException):
        return None
    return body if status == 200 and isinstance(body, dict) else None


def wait_healthy(instances: list[inv.Instance], timeout: float,
                 layout: Layout | None = None) -> list[inv.Instance]:
    """Wait until every instance answers ``/healthz``; the ones that did not in time. With
    the cluster's ``layout``, stop waiting early once supervisord has given an instance up
    (FATAL: it kept exiting at startup)."""
    deadline = time.monotonic() + timeout
    pending = list(instances)
    next_look = time.monotonic() + 2
    while pending and time.monotonic() < deadline:
        pending = [i for i in pending if health(i) is None]
        if pending and layout is not None and time.monotonic() > next_look:
            next_look = time.monotonic() + 1
            if given_up(layout, pending):
                break
        if pending:
            time.sleep(0.1)
    return pending


def given_up(layout: Layout, instances: list[inv.Instance]) -> bool:
    """Whether supervisord has given up one of ``instances`` (FATAL)."""
    for host in {i.name.split("-", 1)[0] for i in instances}:
        conf = os.path.join(layout.host(host), "supervisord.conf")
        done = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", conf,
                               "status"], capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL)
        if any(" FATAL " in f" {line} " for line in done.stdout.splitlines()):
            return True
    return False


def last_words(layout: Layout, instance: inv.Instance, host: inv.Host) -> str:
    """The last line the instance wrote to its log (why it did not start), or ''."""
    path = os.path.join(layout.host(host.name), "log", f"taskrunner_{instance.name}.log")
    try:
        with open(path, errors="replace") as f:
            lines = f.read().strip().splitlines()
    except FileNotFoundError:
        return ""
    return lines[-1] if lines else ""


# -- a host ------------------------------------------------------------------------------


def host_conf(layout: Layout, inventory: inv.Inventory, host: inv.Host, python: str) -> str:
    """Write host ``host``'s supervisord.conf (the renderer's program section and the
    supervisord settings around it, everything under the host's directory); its path."""
    directory = layout.host(host.name)
    os.makedirs(os.path.join(directory, "log"), exist_ok=True)
    program = supervisord.supervisord_program(host, inventory, python, directory,
                                              os.path.join(directory, "log"))
    path = os.path.join(directory, "supervisord.conf")
    with open(path, "w") as f:
        f.write("\n".join([
            f"; Host {host.name} of the cluster in {layout.run_dir}, made by scripts/cluster.",
            "[unix_http_server]", f"file={directory}/supervisor.sock", "chmod=0700",
            "[supervisord]", f"pidfile={directory}/supervisord.pid",
            f"logfile={directory}/log/supervisord.log", f"childlogdir={directory}/log",
            f"directory={directory}",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]", f"serverurl=unix://{directory}/supervisor.sock", "",
            program]))
    return path


def start_host(net: Net, layout: Layout, host: inv.Host, python: str) -> None:
    """Start the host's supervisord in its namespace (it starts the instances and
    daemonizes); `RuntimeError` if it would not start."""
    conf = os.path.join(layout.host(host.name), "supervisord.conf")
    done = subprocess.run(
        ["ip", "netns", "exec", net.namespace(host.name), python, "-m",
         "supervisor.supervisord", "-c", conf],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"supervisord of host {host.name} did not start: "
                           f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def supervisord_pid(net: Net, host: inv.Host) -> int | None:
    """The pid of the host's supervisord, if one runs in its namespace."""
    for pid in net.pids(host.name):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"supervisor.supervisord" in f.read():
                return pid
    return None


def stop_host(net: Net, host: inv.Host) -> None:
    """Stop the host in order: supervisord TERMs its instances (each drains), then exits;
    whatever is left in the namespace after `HOST_STOP` seconds is killed."""
    pid = supervisord_pid(net, host)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + HOST_STOP
        while net.pids(host.name) and time.monotonic() < deadline:
            time.sleep(0.1)
    net.kill_all(host.name)


# -- the front ---------------------------------------------------------------------------


def front_port(inventory: inv.Inventory) -> int:
    """The port of the front's ``listen``."""
    return int(inventory.front.listen.rpartition(":")[2])


def start_front(layout: Layout, inventory: inv.Inventory) -> None:
    """Render the whole nginx.conf of the front and start nginx (it daemonizes)."""
    directory = layout.front
    for sub in ("log", "nginx/client_body", "nginx/proxy", "nginx/fastcgi", "nginx/uwsgi",
                "nginx/scgi"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    if os.geteuid() == 0:  # the workers run as nobody and write their temp files there
        for root, dirs, _ in os.walk(os.path.join(directory, "nginx")):
            for name in [root, *(os.path.join(root, d) for d in dirs)]:
                os.chown(name, 65534, -1)
    write_front_conf(layout, inventory)
    env = {**os.environ, "GLIBC_TUNABLES": nginx.MALLOC_TUNABLES + (
        ":" + os.environ["GLIBC_TUNABLES"] if os.environ.get("GLIBC_TUNABLES") else "")}
    done = subprocess.run([*nginx_command(layout)], env=env, capture_output=True, text=True,
                          check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"nginx did not start: {done.stderr.strip()}")


def write_front_conf(layout: Layout, inventory: inv.Inventory) -> None:
    """Render the front's whole nginx.conf from ``inventory``, replacing the old at once."""
    path = os.path.join(layout.front, "nginx.conf")
    with open(path + ".new", "w") as f:
        f.write(nginx.nginx_conf(inventory.instances, inventory.front, layout.front))
    os.replace(path + ".new", path)


def reload_front(layout: Layout) -> None:
    """``nginx -s reload``: new workers with the new config; the old ones finish the
    requests they carry, so none is dropped."""
    done = subprocess.run(nginx_command(layout, "-s", "reload"), capture_output=True,
                          text=True, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"nginx -s reload: {done.stderr.strip()}")


def nginx_command(layout: Layout, *args: str) -> list[str]:
    """`nginx_binary` with the front's files, then ``args``."""
    return [nginx_binary(), "-p", os.path.join(layout.front, "nginx"), "-e",
            os.path.join(layout.front, "log", "nginx-error.log"), "-c",
            os.path.join(layout.front, "nginx.conf"), *args]


def front_pid(layout: Layout, inventory: inv.Inventory) -> int | None:
    """The pid of the front's nginx master, if one runs."""
    masters = procs.find(layout.front, front_port(inventory))["nginx"]
    return masters[0].pid if masters else None


def stop_front(layout: Layout, inventory: inv.Inventory) -> None:
    """nginx finishes the answers it carries (QUIT), then is made to stop."""
    roles = procs.find(layout.front, front_port(inventory))
    handles = [procs.Handle(p) for p in roles["nginx"] + roles["nginx-worker"]]
    try:
        procs.stop(handles, signal.SIGQUIT, procs.NGINX_STOP, "nginx")
    finally:
        for h in handles:
            h.close()


# -- the index ---------------------------------------------------------------------------


def index_server(layout: Layout, net: Net, port: int) -> PgServer:
    """The cluster's PostgreSQL, on the index address every host reaches."""
    return PgServer(layout.pg, port, net.index_address, allow=net.subnet)


def index_up(server: PgServer) -> bool:
    """Whether the index accepts connections on its address."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((server.listen.split(",")[0], server.port)) == 0

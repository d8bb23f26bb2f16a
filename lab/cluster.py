"""The local cluster, behind scripts/cluster: taskrunner on several hosts behind one front,
on this machine (each host a network namespace), and the print commands that render a real
cluster's configs.

    scripts/cluster up [--hosts 2] [--instances 2]   PostgreSQL, the hosts, the front on
                                                     127.0.0.1:8090; exit 0 when all are
                                                     healthy (or 1, having stopped them)
    scripts/cluster status [--json]                  each part; exit 0 only if all are up
    scripts/cluster stop-host NAME                   SIGKILL everything of host NAME at once
    scripts/cluster start-host NAME                  start it again; it rejoins by itself
    scripts/cluster add-host                         one more host: made, started, put in
                                                     the inventory, nginx reloaded
    scripts/cluster down                             nothing left: no process, namespace,
                                                     veth, address or port
    scripts/cluster print-front --inventory FILE [--whole --run-dir DIR]
    scripts/cluster print-host NAME --inventory FILE [--python P] [--run-dir D] [--log-dir D]

``up``, ``status``, ``stop-host``, ``start-host`` and ``down`` run as root (namespaces); the
print commands run anywhere. The cluster's files are under ``--run-dir`` (default
``run/cluster`` in the repository): the inventory it made (``cluster.toml``), the token of
its instances (``token``), the PostgreSQL directory (``pg``), each host's and the front's
configs and logs. ``up``'s settings are kept in ``cluster.json`` for the other commands.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import secrets
import sys
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from lab import cluster_parts as parts
from lab.netns import Net, NetError, available, listening
from lab.stack_settings import nginx_binary
from taskrunner.config import Config
from taskrunner.deploy import inventory as inv
from taskrunner.deploy import nginx, supervisord
from taskrunner.deploy.settings import Settings as DeploySettings
from taskrunner.deploy.settings import add_arguments, setting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Instances of a local cluster listen on their namespace's address, which only this machine
# reaches: plain HTTP there, the front being the one door (see docs/deploy.md).
INSTANCE_ARGS = ("--insecure-http",)


class UsageError(Exception):
    """A mistake of the caller's; one line, exit 2 (an error while running: exit 1)."""


@dataclass(frozen=True)
class Settings:
    """What ``up`` was told; kept in the run directory for the other commands. Each field
    makes one flag of ``up``, and its row in docs/deploy.md's table (tests/test_docs.py)."""

    hosts: int = setting(2, "hosts (namespaces `PREFIX-h1`, …)")
    instances: int = setting(2, "instances on each host")
    front_port: int = setting(int(inv.Front.listen.rpartition(":")[2]),
                              "the front's port on 127.0.0.1", flag="--port")
    first_port: int = setting(Config().port, "first instance port of every host (each host "
                              "has its own address)")
    pg_port: int = setting(55432, "PostgreSQL's port")
    prefix: str = setting("trc", "names of the namespaces (`trc-h1`), veths (`trc-1r`, "
                          "`trc-1n`) and the index address's label (`lo:trc`); 1-8 lower-case "
                          "letters and digits")
    subnet: str = setting("10.77.0.0/16", "host *i* is `10.77.i.0/24` (its instances on `.2`, "
                          "its gateway `.1`); the index on `10.77.0.1`; refused if a route of "
                          "the machine overlaps it")
    lost_after: float = setting(inv.DEFAULT_LOST_AFTER, "every instance's `--lost-after`")

    def inventory(self, layout: parts.Layout, net: Net) -> inv.Inventory:
        """The inventory of this cluster (what ``up`` writes to ``cluster.toml``)."""
        hosts = tuple(inv.Host(f"h{n}", net.host_address(n), self.first_port, self.instances)
                      for n in range(1, self.hosts + 1))
        front = inv.Front(listen=f"127.0.0.1:{self.front_port}",
                          access_log=os.path.join(layout.front, "log", "nginx-access.log"))
        # The hosts read the index's URL, password included, from the server's 0600 file.
        url_file = parts.index_server(layout, net, self.pg_port).url_file
        return inv.Inventory(front, "", hosts, self.lost_after, layout.token, INSTANCE_ARGS,
                             url_file)


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _err(line: str) -> None:
    sys.stderr.write(f"cluster: {line}\n")


def _load(layout: parts.Layout) -> tuple[Settings, Net, inv.Inventory]:
    try:
        with open(layout.state) as f:
            settings = Settings(**json.load(f))
    except FileNotFoundError:
        raise UsageError(f"no cluster in {layout.run_dir} (no cluster.json): "
                         "'scripts/cluster up' first, or give its --run-dir") from None
    net = Net(settings.prefix, settings.subnet)
    return settings, net, inv.load(layout.inventory)


def up(layout: parts.Layout, settings: Settings) -> int:
    net = Net(settings.prefix, settings.subnet)
    if os.path.exists(layout.state):
        raise UsageError(f"a cluster is already in {layout.run_dir} (cluster.json): "
                         "'scripts/cluster down' first")
    if not 1 <= settings.hosts <= 250:
        raise UsageError("--hosts: from 1 to 250")
    if not os.access(nginx_binary(), os.X_OK):
        raise UsageError(f"nginx not found ({nginx_binary()}): run scripts/install")
    if importlib.util.find_spec("supervisor") is None:
        raise UsageError(f"supervisor is not installed for {sys.executable}: run "
                         "scripts/install, or set PYTHON to the environment that has it")
    net.check_free()
    if listening(settings.front_port):
        raise UsageError(f"port {settings.front_port} (the front) is already in use")
    if listening(settings.pg_port):
        raise UsageError(f"port {settings.pg_port} (PostgreSQL) is already in use")
    inventory = settings.inventory(layout, net)
    text = inv.dump(inventory)
    inv.parse(tomllib.loads(text), "the inventory of these settings")
    os.makedirs(layout.run_dir, exist_ok=True)
    with open(layout.inventory, "w") as f:
        f.write(text)
    with open(layout.state, "w") as f:
        json.dump(asdict(settings), f, indent=1)
    try:
        with open(os.open(layout.token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                  "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        net.create_index()
        parts.index_server(layout, net, settings.pg_port).start()
        python = sys.executable
        for number, host in enumerate(inventory.hosts, 1):
            net.create_host(number, host.name)
            parts.host_conf(layout, inventory, host, python)
            parts.start_host(net, layout, host, python)
        pending = parts.wait_healthy(inventory.instances, 60, layout)
        if pending:
            first = pending[0]
            host = inventory.host(first.name.split("-", 1)[0])
            raise RuntimeError("not healthy: " + ", ".join(i.name for i in pending)
                               + f"; {first.name} said: "
                               + (parts.last_words(layout, first, host) or "nothing")
                               + f" (logs: {layout.run_dir}/hosts/*/log)")
        # nginx starts once every instance listens: else it would mark them down.
        parts.start_front(layout, inventory)
        front = inv.Instance("front", "127.0.0.1", settings.front_port)
        if parts.wait_healthy([front], 10):
            raise RuntimeError(f"the front on {inventory.front.listen} does not answer "
                               f"(log: {layout.front}/log/nginx-error.log)")
    except (RuntimeError, NetError, OSError) as exc:
        _err(f"up failed: {exc}")
        down(layout)
        return 1
    _out(f"cluster: up: front on http://{inventory.front.listen}, "
         f"{len(inventory.hosts)} hosts, {len(inventory.instances)} instances, index "
         f"{parts.index_server(layout, net, settings.pg_port).url} (run dir {layout.run_dir})")
    return 0


def down(layout: parts.Layout) -> int:
    settings, net, inventory = _load(layout)
    left: list[str] = []
    # Every step is tried, whatever the one before it left: the front, the hosts (in
    # order, then whatever is in the namespaces), the network, the index.
    steps: list[tuple[str, Callable[[], None]]] = [
        ("nginx", functools.partial(parts.stop_front, layout, inventory))]
    steps += [(f"host {host.name}", functools.partial(parts.stop_host, net, host))
              for host in inventory.hosts]
    steps += [("the network", net.remove),
              ("PostgreSQL", parts.index_server(layout, net, settings.pg_port).remove)]
    for what, step in steps:
        try:
            step()
        except (RuntimeError, OSError) as exc:
            left.append(f"{what} ({exc})")
    if parts.front_pid(layout, inventory) is not None:
        left.append("nginx")
    left += net.namespaces() + net.devices() + net.addresses()
    if left:
        _err(f"could not stop everything: {', '.join(left)}")
        return 1
    os.unlink(layout.state)
    _out(f"cluster: down (run dir {layout.run_dir})")
    return 0


def status(layout: parts.Layout, as_json: bool) -> int:
    settings, net, inventory = _load(layout)
    server = parts.index_server(layout, net, settings.pg_port)
    report: dict[str, Any] = {
        "front": {"listen": inventory.front.listen,
                  "pid": parts.front_pid(layout, inventory),
                  "ok": parts.health(inv.Instance("front", "127.0.0.1",
                                                  settings.front_port)) is not None},
        "index": {"url": server.url, "ok": parts.index_up(server)},
        "token_file": inventory.token_file,
        "hosts": [],
    }
    token = parts.read_token(inventory.token_file)
    for host in inventory.hosts:
        instances = []
        for instance in host.members:
            seen = parts.health(instance, token)  # the token's answer has the pid
            instances.append({"name": instance.name, "address": instance.endpoint,
                              "pid": seen["pid"] if seen else None, "ok": seen is not None})
        report["hosts"].append({
            "name": host.name, "namespace": net.namespace(host.name),
            "address": host.address, "supervisord_pid": parts.supervisord_pid(net, host),
            "instances": instances, "ok": all(i["ok"] for i in instances)})
    ok = report["front"]["ok"] and report["index"]["ok"] and all(
        h["ok"] for h in report["hosts"])
    if as_json:
        _out(json.dumps({**report, "ok": ok}, indent=1))
        return 0 if ok else 1

    def state(up: bool) -> str:
        return "up" if up else "DOWN"

    front = report["front"]
    _out(f"front  {state(front['ok']):4}  http://{front['listen']}  nginx pid {front['pid']}")
    _out(f"index  {state(report['index']['ok']):4}  {report['index']['url']}")
    for host in report["hosts"]:
        _out(f"host   {state(host['ok']):4}  {host['name']} ({host['namespace']}, "
             f"supervisord pid {host['supervisord_pid']})")
        for i in host["instances"]:
            _out(f"  {state(i['ok']):4}  {i['name']}  http://{i['address']}  pid {i['pid']}")
    return 0 if ok else 1


def stop_host(layout: parts.Layout, name: str) -> int:
    _, net, inventory = _load(layout)
    host = _host(inventory, name)
    killed = net.kill_all(host.name)
    _out(f"cluster: host {name} stopped: SIGKILL to {killed} processes")
    return 0


def start_host(layout: parts.Layout, name: str) -> int:
    _, net, inventory = _load(layout)
    host = _host(inventory, name)
    if net.pids(host.name):
        raise UsageError(f"host {name} is running ('scripts/cluster stop-host {name}' first)")
    if not _started(net, layout, host):
        return 1
    _out(f"cluster: host {name} up: {', '.join(i.endpoint for i in host.members)}")
    return 0


def _started(net: Net, layout: parts.Layout, host: inv.Host) -> bool:
    # Start the host's supervisord; False (having said why) if an instance is not healthy.
    parts.start_host(net, layout, host, sys.executable)
    pending = parts.wait_healthy(host.members, 60, layout)
    if pending:
        said = parts.last_words(layout, pending[0], host) or "nothing"
        _err(f"host {host.name}: not healthy: {', '.join(i.name for i in pending)}; "
             f"{pending[0].name} said: {said} (namespace {net.namespace(host.name)})")
    return not pending


def add_host(layout: parts.Layout) -> int:
    """A host more: its namespace and instances first, then the re-rendered front, which
    nginx takes on with a reload (its old workers finish what they carry)."""
    settings, net, _ = _load(layout)
    settings = replace(settings, hosts=settings.hosts + 1)
    inventory = settings.inventory(layout, net)
    host = inventory.hosts[-1]
    net.create_host(settings.hosts, host.name)
    parts.host_conf(layout, inventory, host, sys.executable)
    if not _started(net, layout, host):
        _err("cluster: the host stays in its namespace, out of the front; 'down' removes it")
        return 1
    with open(layout.inventory, "w") as f:
        f.write(inv.dump(inventory))
    with open(layout.state, "w") as f:
        json.dump(asdict(settings), f, indent=1)
    parts.write_front_conf(layout, inventory)
    parts.reload_front(layout)
    _out(f"cluster: host {host.name} added: {', '.join(i.endpoint for i in host.members)}; "
         "the front reloaded")
    return 0


def _host(inventory: inv.Inventory, name: str) -> inv.Host:
    try:
        return inventory.host(name)
    except inv.InventoryError as exc:
        raise UsageError(str(exc)) from None


def print_front(path: str, whole: bool, run_dir: str | None) -> int:
    inventory = inv.load(path)
    if whole:
        if not run_dir:
            raise UsageError("print-front --whole needs --run-dir (nginx's files go there)")
        sys.stdout.write(nginx.nginx_conf(inventory.instances, inventory.front, run_dir))
    else:
        sys.stdout.write(nginx.http_snippet(inventory.instances, inventory.front))
    return 0


def print_host(path: str, name: str, python: str, run_dir: str, log_dir: str) -> int:
    inventory = inv.load(path)
    sys.stdout.write(supervisord.supervisord_program(_host(inventory, name), inventory, python,
                                                run_dir, log_dir))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run_dir = os.path.join(REPO, "run", "cluster")
    commands = {name: sub.add_parser(name) for name in
                ("up", "down", "status", "stop-host", "start-host", "add-host")}
    for command in commands.values():
        command.add_argument("--run-dir", default=run_dir,
                             help="the cluster's files (default: run/cluster)")
    add_arguments(commands["up"], list(fields(Settings)))
    commands["status"].add_argument("--json", action="store_true")
    for name in ("stop-host", "start-host"):
        commands[name].add_argument("name", help="a host of the inventory, e.g. h1")
    f = sub.add_parser("print-front", help="nginx's http-context part for a conf.d")
    f.add_argument("--inventory", required=True)
    f.add_argument("--whole", action="store_true", help="the whole nginx.conf instead")
    f.add_argument("--run-dir", help="with --whole: where nginx's files go")
    h = sub.add_parser("print-host", help="a host's supervisord program section")
    h.add_argument("name")
    h.add_argument("--inventory", required=True)
    deploy = DeploySettings()
    h.add_argument("--python", default=deploy.python,
                   help="the interpreter with taskrunner installed")
    h.add_argument("--run-dir", default=deploy.run_dir, help="the recycle lock's directory")
    h.add_argument("--log-dir", default=deploy.log_dir)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "print-front":
            return print_front(args.inventory, args.whole, args.run_dir)
        if args.command == "print-host":
            return print_host(args.inventory, args.name, args.python, args.run_dir,
                              args.log_dir)
        why = available()
        if why:
            raise UsageError(why)
        layout = parts.Layout(os.path.abspath(args.run_dir))
        if args.command == "up":
            return up(layout, Settings(**{f.name: getattr(args, f.name)
                                          for f in fields(Settings)}))
        if args.command == "down":
            return down(layout)
        if args.command == "status":
            return status(layout, args.json)
        if args.command == "stop-host":
            return stop_host(layout, args.name)
        if args.command == "add-host":
            return add_host(layout)
        return start_host(layout, args.name)
    except (UsageError, inv.InventoryError, NetError) as exc:
        _err(str(exc))
        return 2 if isinstance(exc, UsageError) else 1
    except (RuntimeError, OSError, ValueError) as exc:
        _err(str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

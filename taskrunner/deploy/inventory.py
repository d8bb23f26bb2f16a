"""The inventory of a cluster: one small TOML file naming the front, the job index and the
hosts with their instances; read and checked here, every mistake a one-line error.

    state_url = "postgresql://taskrunner@10.77.0.1:5432/taskrunner"   # the job index
    # or: state_url_file = "/etc/taskrunner/state-url"   # the URL with its password, 0600
    lost_after = 15                 # --lost-after of every instance (seconds)
    token_file = "/etc/taskrunner/token"     # --token-file of every instance (optional)
    instance_args = ["--insecure-http"]      # more flags for every instance (optional)

    [front]
    listen = "127.0.0.1:8090"       # nginx's address:port
    # tls_cert, tls_key: PEM files, both or neither; max_body: bytes (--max-body's default);
    # access_log: nginx's access log of the front (/var/log/nginx/taskrunner-access.log)
    # server_names: the names clients reach it by (["tasks.example.com"]); the front and its
    # instances (--allowed-host) answer to no other. Default: listen's address (and the
    # loopback names if it is a loopback one); required when listen is 0.0.0.0 or [::]

    [[hosts]]
    name = "h1"                     # [A-Za-z0-9_]+, unique (case aside)
    address = "10.77.1.2"           # where its instances listen, reachable from the front
    first_port = 8885
    instances = 2                   # on first_port, first_port + 1, ...

An instance is named ``<host>-<port>`` (``h1-8885``), the ``--instance`` it runs with and
the first part of its job ids; host names have no ``-``, so the name splits back in one
way only. cluster.example.toml, beside this module, is a commented example; docs/deploy.md
("Scaling out") the manual.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from taskrunner.config import Config

NAME = re.compile(r"[A-Za-z0-9_]+")
# A host name or an IP address: nothing that could end an nginx or supervisord line.
ADDRESS = re.compile(r"[A-Za-z0-9._-]+|\[?[0-9A-Fa-f:.]+\]?")
# What an instance started without these flags has, so that the front and it agree.
DEFAULT_LOST_AFTER = Config().lost_after
DEFAULT_MAX_BODY = Config().max_body
LOOPBACK = ("localhost", "127.0.0.1", "::1")


class InventoryError(ValueError):
    """An inventory that cannot be used; the message is one line naming the file and key."""


@dataclass(frozen=True)
class Instance:
    """One taskrunner process: its ``--instance`` name and where it listens."""

    name: str
    address: str
    port: int

    @property
    def endpoint(self) -> str:
        """``address:port`` as nginx and URLs write it (an IPv6 address in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Host:
    """One machine (or network namespace) running ``instances`` instances."""

    name: str
    address: str
    first_port: int
    instances: int

    @property
    def members(self) -> list[Instance]:
        return [Instance(f"{self.name}-{port}", self.address, port)
                for port in range(self.first_port, self.first_port + self.instances)]


@dataclass(frozen=True)
class Front:
    """The nginx in front of every instance."""

    listen: str = "127.0.0.1:8090"
    tls_cert: str = ""
    tls_key: str = ""
    max_body: int = DEFAULT_MAX_BODY
    access_log: str = "/var/log/nginx/taskrunner-access.log"
    server_names: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        """The host names the front answers to, lower case, as nginx's ``$host`` has them
        (an IPv6 address in brackets): ``server_names`` or the address of ``listen``, and
        the loopback names when one of them is a loopback address."""
        given = list(self.server_names) or [self.listen.rpartition(":")[0]]
        names = [_normal(name.strip("[]").rstrip(".")) for name in given]
        if any(name in LOOPBACK for name in names):
            names += [name for name in LOOPBACK if name not in names]
        return [f"[{name}]" if ":" in name else name for name in names]


@dataclass(frozen=True)
class Inventory:
    """A whole cluster: its front, its job index, its hosts."""

    front: Front
    state_url: str
    hosts: tuple[Host, ...]
    lost_after: float = DEFAULT_LOST_AFTER
    token_file: str = ""
    instance_args: tuple[str, ...] = field(default=())
    state_url_file: str = ""
    """Where each host reads the URL with its password (``--state-url-file``), instead of
    ``state_url``: a password is never on a command line."""

    @property
    def index_flags(self) -> list[str]:
        """How an instance is told where the index is."""
        if self.state_url_file:
            return ["--state-url-file", self.state_url_file]
        return ["--state-url", self.state_url]

    @property
    def instances(self) -> list[Instance]:
        return [instance for host in self.hosts for instance in host.members]

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise InventoryError(f"no host {name!r} in the inventory (hosts: "
                             f"{', '.join(h.name for h in self.hosts)})")


def load(path: str) -> Inventory:
    """Read and check the inventory at ``path``."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise InventoryError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, path)


def parse(data: dict[str, Any], source: str = "inventory") -> Inventory:
    """Check the decoded TOML ``data`` (``source`` names it in errors)."""

    def fail(message: str) -> InventoryError:
        return InventoryError(f"{source}: {message}")

    _known(data, {"front", "state_url", "state_url_file", "lost_after", "token_file",
                  "instance_args", "hosts"}, "", fail)
    front_data = _table(data.get("front", {}), "[front]", fail)
    _known(front_data, {"listen", "tls_cert", "tls_key", "max_body", "access_log",
                        "server_names"}, "front.", fail)
    server_names = front_data.get("server_names", [])
    if not isinstance(server_names, list) or not all(
            isinstance(n, str) and ADDRESS.fullmatch(n) for n in server_names):
        raise fail("front.server_names must be a list of host names or addresses, no ports "
                   "(e.g. [\"tasks.example.com\"])")
    front = Front(
        listen=_string(front_data, "listen", Front.listen, "front.", fail),
        tls_cert=_string(front_data, "tls_cert", "", "front.", fail),
        tls_key=_string(front_data, "tls_key", "", "front.", fail),
        max_body=_integer(front_data, "max_body", DEFAULT_MAX_BODY, 1, 2**40, "front.", fail),
        access_log=_string(front_data, "access_log", Front.access_log, "front.", fail),
        server_names=tuple(server_names),
    )
    listen_host, _, listen_port = front.listen.rpartition(":")
    if not listen_host or not ADDRESS.fullmatch(listen_host) or not listen_port.isdigit() \
            or not 1 <= int(listen_port) <= 65535:
        raise fail(f"front.listen {front.listen!r} is not ADDRESS:PORT (e.g. 127.0.0.1:8090)")
    if not server_names and _normal(listen_host.strip("[]")) in ("0.0.0.0", "::"):
        raise fail("front.listen is a wildcard address: name the front's front.server_names "
                   "(the names clients reach it by; no other Host is answered)")
    if bool(front.tls_cert) != bool(front.tls_key):
        raise fail("front.tls_cert and front.tls_key go together: set both or neither")

    state_url = _string(data, "state_url", "", "", fail)
    state_url_file = _string(data, "state_url_file", "", "", fail)
    if state_url_file:
        if state_url or not state_url_file.startswith("/"):
            raise fail("state_url_file is an absolute path, and replaces state_url: give one")
    elif not re.fullmatch(r"postgres(ql)?://\S+", state_url):
        raise fail("state_url is missing or not a postgresql:// URL (the shared job index)")
    elif _password(state_url):
        raise fail("state_url carries a password, which would be on every instance's command "
                   "line: put the URL in state_url_file (mode 0600), or use a PGPASSFILE")
    lost_after = data.get("lost_after", DEFAULT_LOST_AFTER)
    if isinstance(lost_after, bool) or not isinstance(lost_after, int | float) \
            or lost_after <= 0:
        raise fail(f"lost_after must be a number of seconds above 0, not {lost_after!r}")
    args = data.get("instance_args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise fail("instance_args must be a list of strings (flags of every instance)")

    hosts_data = data.get("hosts")
    if not isinstance(hosts_data, list) or not hosts_data:
        raise fail("no [[hosts]]: the inventory needs at least one host")
    hosts = tuple(_host(entry, i, fail) for i, entry in enumerate(hosts_data))
    names: dict[str, str] = {}
    taken: dict[tuple[str, int], str] = {}
    for host in hosts:
        if host.name.lower() in names:
            raise fail(f"host name {host.name!r} is used twice (names are compared "
                       f"ignoring case: nginx's map does)")
        names[host.name.lower()] = host.name
        for instance in host.members:
            where = (_normal(instance.address), instance.port)
            if where in taken:
                raise fail(f"host {host.name!r}: {instance.endpoint} is also an instance of "
                           f"host {taken[where]!r}")
            taken[where] = host.name
    if (_normal(listen_host), int(listen_port)) in taken:
        raise fail(f"front.listen {front.listen} is also an instance's address and port")
    return Inventory(front, state_url, hosts, float(lost_after),
                     _string(data, "token_file", "", "", fail), tuple(args), state_url_file)


def _host(entry: Any, index: int, fail: Any) -> Host:
    where = f"hosts[{index}]."
    host = _table(entry, f"[[hosts]] number {index + 1}", fail)
    _known(host, {"name", "address", "first_port", "instances"}, where, fail)
    name = _string(host, "name", "", where, fail)
    if not NAME.fullmatch(name):
        raise fail(f"{where}name {name!r}: a host name is letters, digits and '_' (no '-': "
                   "instance names are <host>-<port>)")
    address = _string(host, "address", "", f"host {name!r}: ", fail)
    if not address or not ADDRESS.fullmatch(address):
        raise fail(f"host {name!r}: address {address!r} is not an IP address or host name")
    first_port = _integer(host, "first_port", None, 1, 65535, f"host {name!r}: ", fail)
    count = _integer(host, "instances", None, 1, 1024, f"host {name!r}: ", fail)
    if first_port + count - 1 > 65535:
        raise fail(f"host {name!r}: ports {first_port}..{first_port + count - 1} go past 65535")
    return Host(name, address.strip("[]"), first_port, count)


def _normal(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address.lower()


def _known(table: dict[str, Any], keys: set[str], where: str, fail: Any) -> None:
    for key in table:
        if key not in keys:
            raise fail(f"unknown key {where}{key} (known: {', '.join(sorted(keys))})")


def _table(value: Any, what: str, fail: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(f"{what} must be a table")
    return value


def _string(table: dict[str, Any], key: str, default: str, where: str, fail: Any) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise fail(f"{where}{key} must be a string, not {value!r}")
    return value


def _integer(table: dict[str, Any], key: str, default: int | None, low: int, high: int,
             where: str, fail: Any) -> int:
    value = table.get(key, default)
    if value is None:
        raise fail(f"{where}{key} is missing")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise fail(f"{where}{key} must be a whole number from {low} to {high}, not {value!r}")
    return value


def _password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None or "password=" in urlsplit(url).query
    except ValueError:
        return False


def dump(inventory: Inventory) -> str:
    """The TOML text of ``inventory`` (what `load` reads back as the same inventory)."""

    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    front = inventory.front
    lines = [f"state_url_file = {q(inventory.state_url_file)}" if inventory.state_url_file
             else f"state_url = {q(inventory.state_url)}",
             f"lost_after = {inventory.lost_after:g}"]
    if inventory.token_file:
        lines.append(f"token_file = {q(inventory.token_file)}")
    if inventory.instance_args:
        lines.append(f"instance_args = [{', '.join(q(a) for a in inventory.instance_args)}]")
    lines += ["", "[front]", f"listen = {q(front.listen)}", f"max_body = {front.max_body}",
              f"access_log = {q(front.access_log)}"]
    if front.server_names:
        lines.append(f"server_names = [{', '.join(q(n) for n in front.server_names)}]")
    if front.tls_cert:
        lines += [f"tls_cert = {q(front.tls_cert)}", f"tls_key = {q(front.tls_key)}"]
    for host in inventory.hosts:
        lines += ["", "[[hosts]]", f"name = {q(host.name)}", f"address = {q(host.address)}",
                  f"first_port = {host.first_port}", f"instances = {host.instances}"]
    return "\n".join(lines) + "\n"

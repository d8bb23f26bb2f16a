"""The network of a local cluster (scripts/cluster): one network namespace per host, joined
to the root namespace by a veth pair, and an address in the root namespace for the job
index; made, listed, emptied and removed with ip(8). Needs root.

Host ``i`` (1, 2, ...) of the subnet ``A.B.0.0/16`` is ``A.B.i.0/24``: the root side of its
veth is ``A.B.i.1`` (the host's gateway, and the address the front's connections come
from), the namespace side ``A.B.i.2`` (where its instances listen). The index listens on
``A.B.0.1``, on a dummy device of the root namespace, which every host reaches through its
gateway (a local address: nothing is forwarded), put on ``lo`` with the label ``lo:PREFIX``
(a dummy device would do, but its kernel module is not everywhere). Everything made
carries the prefix: namespace ``PREFIX-NAME``, veths ``PREFIX-Ir`` / ``PREFIX-In``
(interface names have at most 15 characters, so the prefix at most 8).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

PREFIX = re.compile(r"[a-z][a-z0-9]{0,7}")


class NetError(RuntimeError):
    """ip(8) refused something; the message is one line."""


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS``; its output, or `NetError` with ip's own complaint."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise NetError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def available() -> str | None:
    """None if namespaces can be made here, else why not (one line)."""
    if os.geteuid() != 0:
        return "must run as root: it makes network namespaces and veth pairs"
    if shutil.which("ip") is None:
        return "ip(8) is not installed (apt-get install iproute2; scripts/install does it)"
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        return f"ip netns does not work here: {done.stderr.strip()}"
    return None


@dataclass(frozen=True)
class Net:
    """The addresses and names of one cluster's network."""

    prefix: str = "trc"
    subnet: str = "10.77.0.0/16"

    def __post_init__(self) -> None:
        if not PREFIX.fullmatch(self.prefix):
            raise NetError(f"prefix {self.prefix!r}: 1-8 lower-case letters and digits, "
                           "a letter first")
        try:
            network = ipaddress.ip_network(self.subnet)
        except ValueError as exc:
            raise NetError(f"subnet {self.subnet!r}: {exc}") from None
        if network.version != 4 or network.prefixlen != 16:
            raise NetError(f"subnet {self.subnet!r}: an IPv4 /16, e.g. 10.77.0.0/16")

    def _octets(self) -> str:
        return ".".join(self.subnet.split(".")[:2])

    @property
    def index_address(self) -> str:
        return f"{self._octets()}.0.1"

    def gateway(self, number: int) -> str:
        return f"{self._octets()}.{number}.1"

    def host_address(self, number: int) -> str:
        return f"{self._octets()}.{number}.2"

    def namespace(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def _veth(self, number: int) -> tuple[str, str]:
        return f"{self.prefix}-{number}r", f"{self.prefix}-{number}n"

    @property
    def _label(self) -> str:
        return f"lo:{self.prefix}"

    def check_free(self) -> None:
        """`NetError` if a route of this machine already covers the subnet, or a namespace
        or device with the prefix exists (another cluster, or one not taken down)."""
        network = ipaddress.ip_network(self.subnet)
        for line in ip("-4", "route", "show", "table", "all").splitlines():
            words = line.split()
            if not words or words[0] in ("broadcast", "local", "default", "unreachable"):
                continue
            try:
                route = ipaddress.ip_network(words[0], strict=False)
            except ValueError:
                continue
            if route.overlaps(network) and route.prefixlen > 0:
                raise NetError(f"subnet {self.subnet} overlaps the route {line.strip()!r} "
                               "of this machine: choose another with --subnet")
        made = self.namespaces() + self.devices() + self.addresses()
        if made:
            raise NetError(f"namespaces, devices or addresses of prefix {self.prefix} exist "
                           f"already ({', '.join(made)}): another cluster uses this prefix, "
                           "or one was not taken down")

    def namespaces(self) -> list[str]:
        """The namespaces with this prefix."""
        return [line.split()[0] for line in ip("netns", "list").splitlines()
                if line.startswith(f"{self.prefix}-")]

    def devices(self) -> list[str]:
        """The devices of the root namespace with this prefix."""
        found = []
        for line in ip("-o", "link", "show").splitlines():
            name = line.split(":", 2)[1].strip().split("@", 1)[0]
            if name.startswith(f"{self.prefix}-"):
                found.append(name)
        return found

    def addresses(self) -> list[str]:
        """The addresses with this prefix's label on ``lo`` (the index's)."""
        found = []
        for line in ip("-o", "-4", "addr", "show", "dev", "lo").splitlines():
            words = line.replace("\\", " ").split()  # -o puts a backslash after the label
            if self._label in words[4:]:
                found.append(words[3])
        return found

    def create_index(self) -> None:
        """The index's address, on ``lo`` of the root namespace."""
        ip("addr", "add", f"{self.index_address}/32", "dev", "lo", "label", self._label)

    def create_host(self, number: int, name: str) -> None:
        """Host ``number``'s namespace and veth pair, addressed and routed."""
        ns = self.namespace(name)
        outside, inside = self._veth(number)
        ip("netns", "add", ns)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", ns)
        ip("addr", "add", f"{self.gateway(number)}/24", "dev", outside)
        ip("link", "set", outside, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", f"{self.host_address(number)}/24", "dev", inside)
        ip("-n", ns, "link", "set", inside, "up")
        ip("-n", ns, "route", "add", "default", "via", self.gateway(number))

    def pids(self, name: str) -> list[int]:
        """Every process in host ``name``'s namespace (none if it does not exist)."""
        out = ip("netns", "pids", self.namespace(name), check=False)
        return [int(word) for word in out.split() if word.isdigit()]

    def kill_all(self, name: str, timeout: float = 10.0) -> int:
        """SIGKILL every process of host ``name`` at once, as a power cut would, until none
        is left (a fork in between is caught by the next round); how many were killed."""
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while pids := self.pids(name):
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # already gone
                    continue
                killed.add(pid)
            if time.monotonic() > deadline:
                raise NetError(f"processes of {self.namespace(name)} survive SIGKILL: "
                               f"{', '.join(map(str, pids))}")
            time.sleep(0.05)  # the killed ones leave the namespace when reaped
        return len(killed)

    def remove(self) -> None:
        """Every namespace and device with this prefix, their processes killed first."""
        for ns in self.namespaces():
            self.kill_all(ns.removeprefix(f"{self.prefix}-"))
            ip("netns", "del", ns)
        for device in self.devices():  # a veth's root side goes with its namespace
            ip("link", "del", device, check=False)
        for address in self.addresses():
            ip("addr", "del", address, "dev", "lo", check=False)


def listening(port: int) -> bool:
    """Whether a socket of this namespace listens on ``port``, on any address. (A test bind
    would also fail on a connection of another program that has it as its ephemeral port.)"""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False

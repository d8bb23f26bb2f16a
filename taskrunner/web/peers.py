"""Who this instance is to the instances sharing its job index: its default name, the URL
they reach it at (``--advertise-url``), and how it reaches theirs (``--peer-ca-file``).

The name goes into job ids, so it must differ between instances that share an index: by
default ``<host name>-<port>``, which differs between pods (all on one port) and between
the instances of one host. The URL is written to the index when the instance claims its
name (`taskrunner.jobs.store.JobStore.open`); a sibling that gets a request for one of its
running jobs forwards it there (`taskrunner.web.forward`). A wildcard listening address
(``0.0.0.0``, ``::``) is no place to dial, so it is never advertised: the host's name is,
when it names an address of this machine (a pod's name does, in the pod's ``/etc/hosts``),
else the machine's primary address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import ssl

from taskrunner.config import Config
from taskrunner.errors import StartupError
from taskrunner.web.edge import WILDCARDS, is_own_address


def default_name(port: int) -> str:
    """``<host name>-<port>``, the host name's characters an instance name may not hold
    (anything but letters, digits, ``-`` and ``_``) turned to ``-``."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "localhost"
    return f"{host}-{port}"


def advertise_url(config: Config, port: int) -> str:
    """``--advertise-url``, or the one derived from the listening address and ``port``."""
    if config.advertise_url:
        return config.advertise_url.rstrip("/")
    scheme = "https" if config.certfile else "http"
    host = config.address if config.address not in WILDCARDS else _reachable_host(
        socket.AF_INET6 if config.address == "::" else socket.AF_INET)
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


@functools.lru_cache(maxsize=4)  # made once: reading the system's CAs takes ~26 ms
def peer_context(cafile: str | None) -> ssl.SSLContext:
    """The TLS context of forwards to https siblings: their certificate must be signed by a
    CA of ``cafile`` (``--peer-ca-file``; else the system's) and name the host of their
    URL. `StartupError` (one line) if ``cafile`` cannot be read as CA certificates: made
    at start when the flag is given, so no forward meets it."""
    try:
        return ssl.create_default_context(cafile=cafile or None)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"--peer-ca-file {cafile!r}: cannot use it as CA certificates: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None


@functools.lru_cache(maxsize=2)  # the machine's name and addresses, once per family
def _reachable_host(family: int) -> str:
    name = socket.gethostname()
    try:
        found = socket.getaddrinfo(name, None, family, socket.SOCK_STREAM)
    except OSError:
        found = []
    addresses = {str(info[4][0]) for info in found}
    if addresses and all(is_own_address(a) and not ipaddress.ip_address(a).is_loopback
                         for a in addresses):
        return name
    return _primary_address(family)


def _primary_address(family: int) -> str:
    # The source address of the default route: connecting a datagram socket sends nothing.
    target = "2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1"
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return "::1" if family == socket.AF_INET6 else "127.0.0.1"

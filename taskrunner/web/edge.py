"""The browser's edge: which requests a web page could have made against the caller's will.

A page of any origin may send a "simple" request (``GET``, or a ``POST`` of ``text/plain``
or a form) to ``127.0.0.1`` without asking the server first, and a DNS name rebound to a
local address lets a page read the answers too. `BrowserEdge.check` refuses, in this order:

1. a ``Host`` the instance does not answer to (421 ``host_not_allowed``): a rebound name,
   whatever the method. The name is compared, never the port (nginx passes ``$host``
   without it). Allowed: the listening address, ``localhost``, ``127.0.0.1``, ``::1``,
   each ``--allowed-host``, the host of ``--advertise-url`` (where siblings forward to);
   on a wildcard bind (``0.0.0.0``, ``::``) also the machine's own
   addresses (so a container platform's probe to the pod's IP passes) and host name;
2. a state-changing request (``POST``, ``PUT``, ``PATCH``, ``DELETE``) whose ``Origin`` is
   foreign (its host not allowed by rule 1, or ``null``) and not an ``--allowed-origin``
   (403 ``origin_not_allowed``);
3. a request a browser made (it carries ``Origin`` or a ``Sec-Fetch-*`` header) whose body
   is of a type a page may send without a CORS preflight (``text/plain``,
   ``application/x-www-form-urlencoded``, ``multipart/form-data``, or a body with no type
   at all) (415 ``unsupported_media_type``). taskrunner grants no preflight, so a page of
   another origin can send nothing else.

A client that is no browser (``curl``, ``trun``, the Python client) sends neither
``Origin`` nor ``Sec-Fetch-*``, so rule 3 leaves ``curl -d '{...}'`` (a form type) alone.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from urllib.parse import urlsplit

from tornado.httputil import HTTPHeaders

from taskrunner.config import Config
from taskrunner.errors import HostNotAllowed, OriginNotAllowed, UnsupportedMediaType

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("", "0.0.0.0", "::")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SIMPLE_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded",
                          "multipart/form-data"})


def normal_host(name: str) -> str:
    """``name`` as compared: lower case, no brackets, no trailing dot, an IP address in its
    canonical form (``0:0::1`` is ``::1``)."""
    name = name.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


@functools.lru_cache(maxsize=1024)  # the same few Host values, request after request
def host_of(header: str) -> str:
    """The host name of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``)."""
    header = header.strip()
    if header.startswith("["):
        return normal_host(header[:header.find("]") + 1] if "]" in header else header)
    return normal_host(header.rpartition(":")[0] if header.count(":") == 1 else header)


def is_own_address(name: str) -> bool:
    """Whether ``name`` is an IP address of this machine: one a socket can be bound to (a
    system call; `BrowserEdge` keeps the addresses found so, and asks again only of others,
    so an address added after start, a pod's or a new interface's, counts)."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


class BrowserEdge:
    """The Host, Origin and Content-Type rules of one instance (see the module)."""

    def __init__(self, config: Config) -> None:
        self.any_host = "*" in config.allowed_host
        self.wildcard = config.address in WILDCARDS
        advertised = urlsplit(config.advertise_url).hostname if config.advertise_url else None
        names = {normal_host(n) for n in (config.address, *LOOPBACK_NAMES, *config.allowed_host,
                                          *([advertised] if advertised else []))
                 if n not in WILDCARDS and n != "*"}
        if self.wildcard:
            hostname = socket.gethostname()
            names |= {normal_host(hostname), normal_host(socket.getfqdn(hostname))}
        self.names = frozenset(names)
        self.origins = frozenset(o.lower() for o in config.allowed_origin)
        self._own: set[str] = set()
        """On a wildcard bind, the addresses found to be this machine's: a probe's Host,
        request after request, costs no system call. At most the machine's addresses; one
        removed later still counts (it was this machine's)."""

    def host_allowed(self, name: str) -> bool:
        """Whether the instance answers to the (normalised) host ``name``."""
        if self.any_host or name in self.names or name in self._own:
            return True
        if self.wildcard and is_own_address(name):
            self._own.add(name)
            return True
        return False

    def check(self, method: str, headers: HTTPHeaders) -> None:
        """Raise the error of the first rule the request breaks; return if it breaks none."""
        host = headers.get("Host")
        # HTTP/1.0 without a Host: no browser sends that.
        if host is not None and not self.host_allowed(host_of(host)):
            raise HostNotAllowed(
                f"this instance does not answer to the host {host_of(host)!r}; "
                "--allowed-host names more")
        origin = headers.get("Origin")
        if origin is not None and method in STATE_CHANGING and not self._origin_allowed(origin):
            raise OriginNotAllowed(
                f"a page of the origin {origin!r} may not {method} here; "
                "--allowed-origin names more")
        # HTTPHeaders keeps names normalised: "sec-fetch-site" is "Sec-Fetch-Site".
        browser = origin is not None or any(k.startswith("Sec-Fetch-") for k in headers)
        if browser and self._simple_body(headers):
            raise UnsupportedMediaType(
                "a browser's request must send its body as Content-Type: application/json")

    def _origin_allowed(self, origin: str) -> bool:
        origin = origin.strip().lower()
        if origin in self.origins:
            return True
        if origin == "null":
            return False
        try:
            parts = urlsplit(origin)
            parts.port  # noqa: B018 - raises on a port that is no number
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        return self.host_allowed(normal_host(parts.hostname))

    @staticmethod
    def _simple_body(headers: HTTPHeaders) -> bool:
        declared = headers.get("Content-Type")
        if declared is None:
            # A Blob body with no type goes out with no Content-Type, preflight-free.
            length = headers.get("Content-Length", "0").strip()
            return length not in ("", "0") or "Transfer-Encoding" in headers
        return declared.split(";", 1)[0].strip().lower() in SIMPLE_TYPES

"""Socket activation: the listening sockets a service manager hands the instance.

systemd (a ``.socket`` unit) or ``systemd-socket-activate`` binds the port itself and starts
the instance with the sockets open from fd 3 on, saying so in ``LISTEN_FDS`` (how many),
``LISTEN_PID`` (whose they are) and ``LISTEN_FDNAMES`` (their names, ``:``-separated), as
``sd_listen_fds(3)`` reads them. The instance then serves those sockets instead of binding:
the port is held across restarts, and connections made while the instance starts wait in
the backlog instead of being refused.

Variables meant for another process (``LISTEN_PID`` not ours: an environment inherited
from a parent that was activated) are ignored, as libsystemd ignores them. Taken sockets
are made close-on-exec, and the three variables are removed from ``os.environ``, so that
nothing the instance starts inherits either (a command's environment never has them
anyway: `taskrunner.process.environment`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

FIRST_FD = 3
"""``SD_LISTEN_FDS_START``: the first socket handed over."""

NAMES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


class ActivationError(Exception):
    """The sockets handed over cannot be served (one line, naming the fd)."""


@dataclass(frozen=True)
class Activated:
    """One socket handed over: the socket, its fd's name (``LISTEN_FDNAMES``) and where it
    listens."""

    sock: socket.socket
    name: str
    host: str
    port: int


def inherited_sockets(environ: MutableMapping[str, str]) -> list[Activated]:
    """The TCP listening sockets handed to this process (empty: none; bind as usual), the
    three variables removed from ``environ``; `ActivationError` if one handed over is no
    listening TCP socket."""
    count, pid = environ.get("LISTEN_FDS", ""), environ.get("LISTEN_PID", "")
    names = environ.get("LISTEN_FDNAMES", "")
    for name in NAMES:
        environ.pop(name, None)
    if count in ("", "0") or not pid.isdigit() or int(pid) != os.getpid():
        return []
    if not count.isdigit() or int(count) < 1:
        raise ActivationError(f"LISTEN_FDS={count!r}: not a count of sockets")
    labels = names.split(":") if names else []
    found: list[Activated] = []
    try:
        for index in range(int(count)):
            fd = FIRST_FD + index
            found.append(_take(fd, labels[index] if index < len(labels) else "unknown"))
    except BaseException:
        for each in found:
            each.sock.detach()  # never ours to close: the manager may hand it over again
        raise
    return found


def _take(fd: int, name: str) -> Activated:
    try:
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ActivationError(f"LISTEN_FDS: fd {fd} ({name}) is no socket: "
                              f"{exc.strerror or exc}") from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if (sock.family not in (socket.AF_INET, socket.AF_INET6)
            or sock.type != socket.SOCK_STREAM or not listening):
        sock.detach()
        raise ActivationError(f"LISTEN_FDS: fd {fd} ({name}) is not a listening TCP socket "
                              "(ListenStream= an address and port, Accept=no)")
    sock.setblocking(False)
    host, port = sock.getsockname()[:2]
    # A link-local IPv6 address carries its interface (fe80::1%eth0): the address is compared.
    return Activated(sock, name, host.partition("%")[0], port)

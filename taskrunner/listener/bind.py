"""`bind_sockets`: the instance's listening sockets, made whole or not at all.

As Tornado's ``tornado.netutil.bind_sockets``: one listening socket per address the name
resolves to (IPv6 ones IPv6-only, so that IPv4 gets its own), all on the port the first one
got, and an IPv6 loopback the host lacks skipped for ``localhost``. The difference: when one
of them fails (a port already taken), the sockets made before it are closed at once, not
left open until the garbage collector finds them — an instance started in a process that
lives on (a test, an embedding) must not keep a port or a descriptor it was refused.
"""

from __future__ import annotations

import errno
import socket


def bind_sockets(address: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening, non-blocking sockets on ``address`` (a name or a literal; empty: every
    interface) and ``port`` (0: one the kernel picks); `OSError` if one cannot be made."""
    found = socket.getaddrinfo(address or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                               0, socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, where in sorted(set(found), key=lambda info: info[0]):
            if port == 0 and sockets:  # the same port on every address
                where = (where[0], sockets[0].getsockname()[1], *where[2:])
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setblocking(False)
            try:
                sock.bind(where)
            except OSError as exc:
                # A host (a container, say) whose ::1 cannot be bound still serves
                # localhost on 127.0.0.1.
                if (exc.errno, family, address) != (errno.EADDRNOTAVAIL, socket.AF_INET6,
                                                    "localhost"):
                    raise
                sockets.pop().close()
                continue
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets

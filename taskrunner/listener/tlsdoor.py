"""The door of the HTTPS port: a TLS client goes in, a plain HTTP one gets a JSON 400.

Tornado wraps every accepted connection in TLS at once, so a plain HTTP request to the
HTTPS port fails inside OpenSSL and the client sees a reset, with nothing to say what went
wrong. nginx answers it instead ("The plain HTTP request was sent to HTTPS port"), and so
does this: a `Doorway` waits for a new connection's first byte without reading it. A TLS
record starts with 0x16 (handshake): the connection goes on to Tornado untouched. Anything
else is answered `PLAIN_HTTP_RESPONSE` in clear text, the error shape every answer has,
and closed the way nginx's lingering close does it (`taskrunner.listener.linger`), so the
kernel does not reset the connection (and drop the answer) over unread request bytes.

A connection in the doorway is bounded by ``--idle-timeout`` like slow request headers,
counts against ``--max-connections`` and is among the first to go when room is needed (it
has sent nothing); see `taskrunner.listener.connections`.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson
from tornado.ioloop import IOLoop

log = logging.getLogger("taskrunner.tls")

TLS_HANDSHAKE = 0x16
"""The first byte of a TLS record of type handshake: how every TLS client begins."""

_BODY = orjson.dumps({
    "error": "plain_http",
    "message": "this port speaks HTTPS: the request went out in clear text; use https://",
}) + b"\n"
PLAIN_HTTP_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(_BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + _BODY
)


class Doorway:
    """One new connection to the HTTPS port, until its first byte says what it speaks.

    ``on_tls`` gets the connection, untouched, when a TLS handshake begins; ``on_plain``
    gets it with the answer to send before its lingering close; ``on_leave`` is called once
    when the doorway lets go of it (handed on or closed).
    """

    def __init__(self, sock: socket.socket, address: Any, timeout: float,
                 on_tls: Callable[[socket.socket, Any], None],
                 on_leave: Callable[[Doorway], None],
                 on_plain: Callable[[socket.socket, bytes], None]) -> None:
        self.sock = sock
        self.address = address
        self.on_tls = on_tls
        self.on_leave = on_leave
        self.on_plain = on_plain
        self.loop = IOLoop.current()
        self.fd = sock.fileno()
        self.opened = time.monotonic()
        self.done = False
        self.loop.add_handler(self.fd, self._on_readable, IOLoop.READ)
        self.timer: object | None = self.loop.call_later(timeout, self.close)

    def close(self) -> None:
        """Close the connection (timed out, shed, or the server stops)."""
        if self.done:
            return
        self._leave()
        self.sock.close()

    def _leave(self) -> None:
        self.done = True
        self.loop.remove_handler(self.fd)
        if self.timer is not None:
            self.loop.remove_timeout(self.timer)
            self.timer = None
        self.on_leave(self)

    def _on_readable(self, fd: Any, events: int) -> None:
        try:
            head = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            head = b""  # reset by the peer
        if not head:
            self.close()
        elif head[0] == TLS_HANDSHAKE:
            self._leave()
            self.on_tls(self.sock, self.address)
        else:
            log.info("plain HTTP from %s on the HTTPS port: answered 400 plain_http",
                     self.address[0] if isinstance(self.address, tuple) else self.address)
            self._leave()
            self.on_plain(self.sock, PLAIN_HTTP_RESPONSE)

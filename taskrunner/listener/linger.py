"""Lingering close: closing a connection so that its client reads the answer first.

A server that closes a connection while its client is still sending (the body of a request
answered before it was read: a 413, a 401, a 408, a 431 for headers over the limit) has
unread bytes in its socket, and the kernel answers them with a reset; the reset makes the
client's kernel throw away what it had received and not yet read, the answer included
(RFC 9112 §9.6). A client sending a large body reads nothing until it has sent it all, so
it sees only the reset. nginx's ``lingering_close`` closes in stages instead, and so does a
`Lingering`: the answer is out (or goes out now), the write side is shut, so the client
sees the answer end; what the client still sends is read and dropped until it closes, for
at most `LINGER_TIME` seconds and `LINGER_BYTES` bytes (as nginx's ``lingering_time``);
then the connection is closed.

A lingering connection still holds a descriptor: `taskrunner.listener.connections` counts
it against ``--max-connections`` and closes it first when room is needed.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from tornado.ioloop import IOLoop

LINGER_TIME = 2.0
"""Seconds a client may go on sending after its answer, before its connection is closed."""

LINGER_BYTES = 64 << 20
"""Bytes read and dropped at most, so a fast sender costs a bounded amount of CPU."""

_READ = 1 << 16
_READS_PER_WAKEUP = 16  # 1 MiB per wake-up at most: one fast sender does not hog the loop


class Lingering:
    """One connection in a lingering close; ``on_closed`` is called once it is closed.

    ``answer`` is sent first (all at once or not at all: it is small, and a client that
    left a full send buffer behind is not reading anyway).
    """

    def __init__(self, sock: socket.socket, answer: bytes,
                 on_closed: Callable[[Lingering], None]) -> None:
        self.sock = sock
        self.on_closed = on_closed
        self.dropped = 0
        self.closed = False
        self.loop = IOLoop.current()
        self.fd = sock.fileno()
        self.timer: object | None = None
        try:
            sock.setblocking(False)
            # An SSLSocket's send encrypts; shutting down and reading go to the raw socket
            # (SSLSocket.shutdown would drop its TLS state, recv would decrypt).
            if answer and sock.send(answer) < len(answer):
                raise BlockingIOError
            socket.socket.shutdown(sock, socket.SHUT_WR)
        except OSError:  # ssl.SSLError included: the client is gone, or not reading
            self.closed = True
            sock.close()
            return
        self.loop.add_handler(self.fd, self._on_readable, IOLoop.READ)
        self.timer = self.loop.call_later(LINGER_TIME, self.close)

    def close(self) -> None:
        """Close the connection now (the time is up, room is needed, or the server stops)."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_handler(self.fd)
        if self.timer is not None:
            self.loop.remove_timeout(self.timer)
            self.timer = None
        self.sock.close()
        self.on_closed(self)

    def _on_readable(self, fd: Any, events: int) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = socket.socket.recv(self.sock, _READ, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""  # reset by the client: nothing is left to save
            if not data:
                self.close()  # the client has read its answer and closed
                return
            self.dropped += len(data)
            if self.dropped > LINGER_BYTES:
                self.close()
                return

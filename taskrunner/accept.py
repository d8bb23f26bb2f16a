"""Accepting connections when the process is out of file descriptors.

Tornado's accept handler lets ``EMFILE`` escape: the listening socket stays readable, so
the event loop calls it again at once and logs the same traceback on every turn, at full
CPU, until a descriptor frees up. `add_accept_handler` here does what nginx does instead:
it logs one warning, stops accepting for `PAUSE` seconds (the pending connections wait in
the listen backlog) and tries again.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

from tornado.ioloop import IOLoop

log = logging.getLogger("taskrunner.accept")

PAUSE = 0.1
"""Seconds without accepting after accept() ran out of descriptors or memory."""

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPTS_PER_WAKEUP = 128  # as Tornado: bound the work of one wake-up

ConnectionCallback = Callable[[socket.socket, Any], None]


def accept_waiting(sock: socket.socket, callback: ConnectionCallback,
                   limit: int | None = None) -> bool:
    """Accept the connections waiting on ``sock`` (at most ``limit``) and hand each to
    ``callback``; False if accept() ran out of descriptors or memory (logged once)."""
    accepted = 0
    while limit is None or accepted < limit:
        try:
            connection, address = sock.accept()
        except BlockingIOError:
            return True
        except ConnectionAbortedError:
            continue
        except OSError as exc:
            if exc.errno not in _OUT_OF_RESOURCES:
                raise
            log.warning("cannot accept connections: %s; pausing %.1fs", exc.strerror, PAUSE)
            return False
        accepted += 1
        callback(connection, address)
    return True


class _Acceptor:
    """Accepts on one listening socket from the IOLoop; pauses when out of descriptors."""

    def __init__(self, sock: socket.socket, callback: ConnectionCallback) -> None:
        self.sock = sock
        self.callback = callback
        self.loop = IOLoop.current()
        self.removed = False
        self.resume_timer: object | None = None
        self.loop.add_handler(sock, self._on_readable, IOLoop.READ)

    def _on_readable(self, fd: Any, events: int) -> None:
        if self.removed:
            return
        if not accept_waiting(self.sock, self.callback, _ACCEPTS_PER_WAKEUP):
            self.loop.remove_handler(self.sock)
            self.resume_timer = self.loop.call_later(PAUSE, self._resume)

    def _resume(self) -> None:
        self.resume_timer = None
        if not self.removed:
            self.loop.add_handler(self.sock, self._on_readable, IOLoop.READ)

    def remove(self) -> None:
        """Stop accepting for good."""
        if self.removed:
            return
        self.removed = True
        if self.resume_timer is not None:
            self.loop.remove_timeout(self.resume_timer)  # paused: not registered now
        else:
            self.loop.remove_handler(self.sock)


def add_accept_handler(sock: socket.socket, callback: ConnectionCallback) -> Callable[[], None]:
    """Like `tornado.netutil.add_accept_handler`, pausing instead of spinning on EMFILE.

    Returns the function that stops accepting for good.
    """
    return _Acceptor(sock, callback).remove

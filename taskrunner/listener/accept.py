"""Accepting connections when the process is out of file descriptors, or at its cap.

Tornado's accept handler lets ``EMFILE`` escape: the listening socket stays readable, so
the event loop calls it again at once and logs the same traceback on every turn, at full
CPU, until a descriptor frees up. `add_accept_handler` here does what nginx does instead:
it logs one warning, stops accepting for `PAUSE` seconds (the pending connections wait in
the listen backlog) and tries again.

With an `AcceptGate` (``--max-connections``, see `taskrunner.listener.connections`) it
accepts only while the gate has room; when the gate cannot make room it stops accepting
until the gate calls back, so a full instance does not spin on a readable listening socket
either.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
from collections.abc import Callable
from typing import Any, Protocol

from tornado.ioloop import IOLoop

log = logging.getLogger("taskrunner.accept")

PAUSE = 0.1
"""Seconds without accepting after accept() ran out of descriptors or memory."""

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPTS_PER_WAKEUP = 128  # as Tornado: bound the work of one wake-up

ConnectionCallback = Callable[[socket.socket, Any], None]


class AcceptGate(Protocol):
    """Decides whether one more connection may be accepted."""

    def has_room(self) -> bool:
        """True if a connection may be accepted as things are."""

    def make_room(self) -> bool:
        """A connection is known to wait: make room for it if need be; False if none can
        be made."""

    def when_room(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when room may have been made."""


def accept_waiting(sock: socket.socket, callback: ConnectionCallback,
                   limit: int | None = None, gate: AcceptGate | None = None) -> bool:
    """Accept the connections waiting on ``sock`` (at most ``limit``, and while ``gate``
    has room) and hand each to ``callback``; False if accept() ran out of descriptors or
    memory (logged once)."""
    accepted = 0
    while limit is None or accepted < limit:
        # Room is made (a connection closed) only for a connection known to wait: the
        # first of a wake-up (the socket was readable), or one the socket still shows.
        if gate is not None and not gate.has_room() and (
                (accepted > 0 and not _readable(sock)) or not gate.make_room()):
            return True
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


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _Acceptor:
    """Accepts on one listening socket from the IOLoop; pauses when out of descriptors."""

    def __init__(self, sock: socket.socket, callback: ConnectionCallback,
                 gate: AcceptGate | None) -> None:
        self.sock = sock
        self.callback = callback
        self.gate = gate
        self.loop = IOLoop.current()
        self.removed = False
        self.paused = False
        self.resume_timer: object | None = None
        self.loop.add_handler(sock, self._on_readable, IOLoop.READ)

    def _on_readable(self, fd: Any, events: int) -> None:
        if self.removed or self.paused:
            return
        if self.gate is not None and not self.gate.make_room():
            # Full of busy connections: listen again once one of them closes or idles.
            self._pause()
            self.gate.when_room(self._resume)
            return
        if not accept_waiting(self.sock, self.callback, _ACCEPTS_PER_WAKEUP, self.gate):
            self._pause()
            self.resume_timer = self.loop.call_later(PAUSE, self._resume)

    def _pause(self) -> None:
        self.paused = True
        self.loop.remove_handler(self.sock)

    def _resume(self) -> None:
        self.resume_timer = None
        if self.paused and not self.removed:
            self.paused = False
            self.loop.add_handler(self.sock, self._on_readable, IOLoop.READ)

    def remove(self) -> None:
        """Stop accepting for good."""
        if self.removed:
            return
        self.removed = True
        if self.resume_timer is not None:
            self.loop.remove_timeout(self.resume_timer)
        if not self.paused:
            self.loop.remove_handler(self.sock)


def add_accept_handler(sock: socket.socket, callback: ConnectionCallback,
                       gate: AcceptGate | None = None) -> Callable[[], None]:
    """Like `tornado.netutil.add_accept_handler`, pausing instead of spinning on EMFILE,
    and accepting only while ``gate`` (if any) has room.

    Returns the function that stops accepting for good.
    """
    return _Acceptor(sock, callback, gate).remove

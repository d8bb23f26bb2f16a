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


def add_accept_handler(sock: socket.socket,
                       callback: Callable[[socket.socket, Any], None]) -> Callable[[], None]:
    """Like `tornado.netutil.add_accept_handler`, pausing instead of spinning on EMFILE.

    Returns the function that stops accepting for good.
    """
    loop = IOLoop.current()
    state: dict[str, Any] = {"removed": False, "resume": None}

    def accept(fd: Any, events: int) -> None:
        for _ in range(_ACCEPTS_PER_WAKEUP):
            if state["removed"]:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                log.warning("cannot accept connections: %s; pausing %.1fs", exc.strerror, PAUSE)
                loop.remove_handler(sock)
                state["resume"] = loop.call_later(PAUSE, resume)
                return
            callback(connection, address)

    def resume() -> None:
        state["resume"] = None
        if not state["removed"]:
            loop.add_handler(sock, accept, IOLoop.READ)

    def remove() -> None:
        if state["removed"]:
            return
        state["removed"] = True
        if state["resume"] is not None:
            loop.remove_timeout(state["resume"])  # paused: not registered now
        else:
            loop.remove_handler(sock)

    loop.add_handler(sock, accept, IOLoop.READ)
    return remove

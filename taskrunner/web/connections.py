"""Bounding the open client connections (``--max-connections``).

Without a bound, anyone who can connect can hold every file descriptor with idle
connections, and the instance answers nobody until ``--idle-timeout`` closes them. With it,
the instance never holds more than the cap, and at the cap it makes room the way a caller
would want:

* a connection is *idle* while no request is in progress on it: between keep-alive
  requests, and before its request headers are complete (a slow-header caller holds
  nothing worth keeping). It is *busy* from its complete headers to the end of its response;
* a new connection takes the place of the one idle longest, which is closed. One with
  bytes already waiting in the kernel is skipped: a request is arriving on it;
* when every connection is busy, accepting waits (new callers wait in the listen backlog)
  until one closes or turns idle.

The default cap leaves descriptors for the work the connections ask for: the open-file
limit, less `FD_RESERVE` for the instance's own files, less `FDS_PER_COMMAND` for each of
``--max-running`` commands.
"""

from __future__ import annotations

import logging
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPMessageDelegate,
    RequestStartLine,
    ResponseStartLine,
)
from tornado.ioloop import IOLoop

from taskrunner.web.accept import add_accept_handler
from taskrunner.web.recycle import DrainingHTTPServer
from taskrunner.web.tlsdoor import Doorway

log = logging.getLogger("taskrunner.connections")

FD_RESERVE = 64
"""Descriptors kept for the instance's own files: listening socket, event loop, log, job
store, watchdog, /dev/null."""

FDS_PER_COMMAND = 4
"""Descriptors a running command holds besides its caller's connection: its stdout,
stderr and stdin pipes and its pidfd."""

MIN_CONNECTIONS = 16

_WARN_EVERY = 10.0  # seconds between two "at the cap" warnings


def default_max_connections(max_running: int) -> int:
    """The default ``--max-connections`` for this process's open-file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(MIN_CONNECTIONS, soft - FD_RESERVE - FDS_PER_COMMAND * max_running)


class CappedHTTPServer(DrainingHTTPServer):
    """A `DrainingHTTPServer` that holds at most ``max_connections`` client connections."""

    def initialize(self, *args: Any, max_connections: int = 0, **kwargs: Any) -> None:
        """``max_connections``: the cap; 0, no cap (`Server` resolves the config's 0)."""
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        # Idle connections, the one idle longest first; shed ones until Tornado's on_close.
        self._idle: OrderedDict[Any, None] = OrderedDict()
        self._shed: set[Any] = set()
        self._room_waiters: list[Callable[[], None]] = []
        self.shed_total = 0
        self._shed_unreported = 0
        self._last_warning = float("-inf")
        # HTTPS: new connections before their first byte (taskrunner.web.tlsdoor), oldest
        # first; bounded by the idle timeout, as slow request headers are.
        self._doorways: dict[Doorway, None] = {}
        self._doorway_timeout = float(kwargs.get("idle_connection_timeout") or 3600)

    @property
    def held_connections(self) -> int:
        """Client connections open and not yet shed, those in the HTTPS doorway included."""
        return len(self._connections) - len(self._shed) + len(self._doorways)

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        """Listen on ``sockets``, accepting only while under the cap."""
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = add_accept_handler(
                sock, self._handle_connection, gate=self)

    # -- the accept gate (see taskrunner.web.accept.AcceptGate) -----------------------

    def has_room(self) -> bool:
        """True while under the cap."""
        return self.max_connections <= 0 or self.held_connections < self.max_connections

    def make_room(self) -> bool:
        """Room for a connection known to be waiting: shed the one idle longest if at the
        cap; False if every connection is busy."""
        if self.has_room():
            return True
        if self._doorways:  # the oldest of those that have sent nothing at all
            next(iter(self._doorways)).close()
            self._count_shed()
            return True
        for server_conn in list(self._idle):
            if self._quiet(server_conn):
                self._shed_connection(server_conn)
                return True
        return False

    def when_room(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when a connection closes or turns idle."""
        self._room_waiters.append(callback)
        self._warn(f"at --max-connections {self.max_connections} with every connection "
                   "busy: new connections wait in the listen backlog")

    # -- tracking ----------------------------------------------------------------------

    def _handle_connection(self, connection: socket.socket, address: Any) -> None:
        # Tornado's (private) entry for an accepted connection: over HTTPS, the connection
        # waits in a doorway for its first byte before Tornado wraps it in TLS.
        if self.ssl_options is None:
            super()._handle_connection(connection, address)
            return
        doorway = Doorway(connection, address, self._doorway_timeout,
                          super()._handle_connection, self._left_doorway)
        self._doorways[doorway] = None

    def _left_doorway(self, doorway: Doorway) -> None:
        del self._doorways[doorway]
        self._wake_waiters()

    async def close_all_connections(self) -> None:
        """Close the connections in the HTTPS doorway, then, as Tornado, every other one."""
        for doorway in list(self._doorways):
            doorway.close()
        await super().close_all_connections()

    def start_request(self, server_conn: object,
                      request_conn: HTTPConnection) -> HTTPMessageDelegate:
        # Tornado calls this when a connection is ready for its next request: idle now.
        self._idle[server_conn] = None
        self._idle.move_to_end(server_conn)
        self._wake_waiters()
        return _BusyOnHeaders(super().start_request(server_conn, request_conn),
                              self._idle, server_conn)

    def on_close(self, server_conn: Any) -> None:
        self._idle.pop(server_conn, None)
        self._shed.discard(server_conn)
        super().on_close(server_conn)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        if self._room_waiters:
            waiters, self._room_waiters = self._room_waiters, []
            for callback in waiters:
                IOLoop.current().add_callback(callback)

    @staticmethod
    def _quiet(server_conn: Any) -> bool:
        sock = server_conn.stream.socket
        if sock is None:
            return True
        try:
            # socket.socket's recv, also for an SSLSocket (whose own refuses flags): any
            # bytes waiting, a TLS record included, mean a request is arriving; b"", the
            # peer left.
            return not socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True  # nothing waiting: idle indeed
        except OSError:
            return True  # reset by the peer: closing it is all that is left

    def _shed_connection(self, server_conn: Any) -> None:
        del self._idle[server_conn]
        self._shed.add(server_conn)
        server_conn.stream.close()  # its serving loop ends, then on_close
        self._count_shed()

    def _count_shed(self) -> None:
        self.shed_total += 1
        self._shed_unreported += 1
        if self._warn(f"at --max-connections {self.max_connections}: closed "
                      f"{self._shed_unreported} idle connections for new ones"):
            self._shed_unreported = 0

    def _warn(self, message: str) -> bool:
        # Once per _WARN_EVERY seconds at most: a flood must not flood the log too.
        now = time.monotonic()
        if now - self._last_warning < _WARN_EVERY:
            return False
        log.warning("%s", message)
        self._last_warning = now
        return True


class _BusyOnHeaders(HTTPMessageDelegate):
    """Passes a request through; its connection is busy once the headers are in."""

    def __init__(self, delegate: HTTPMessageDelegate, idle: OrderedDict[Any, None],
                 server_conn: object) -> None:
        self.delegate = delegate
        self.idle = idle
        self.server_conn = server_conn

    def headers_received(self, start_line: RequestStartLine | ResponseStartLine,
                         headers: HTTPHeaders) -> Awaitable[None] | None:
        self.idle.pop(self.server_conn, None)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()

"""Bounding the open client connections (``--max-connections``), strangers first.

Without a bound, anyone who can connect can hold every file descriptor with idle
connections, and the instance answers nobody until ``--idle-timeout`` closes them. With it,
the instance never holds more than the cap, and at the cap it makes room the way a caller
would want:

* a connection is *trusted* while its last request carried a valid token (or the instance
  needs none), as the ``trusts`` callable says (the server passes one that asks the
  callers the handlers ask: the listener knows nothing of them); any other connection —
  a new one, one in the HTTPS doorway, one whose request had no valid token — is a
  *stranger*;
* a connection is *idle* while no request is in progress on it: between keep-alive
  requests, and before its request headers are complete (a slow-header caller holds
  nothing worth keeping). It is *busy* from its complete headers to the end of its response;
* a new connection takes the place of, in this order: a connection in a lingering close
  (answered, `taskrunner.listener.linger`); one in the HTTPS doorway (it has sent nothing); a
  stranger whose request body is still arriving (the instance will not use it: the request
  is refused, or its route takes no body); the stranger idle longest; and, only while
  strangers hold less than half the cap, the trusted connection idle longest. An idle one
  with bytes already waiting in the kernel is skipped: a request is arriving on it; so is
  one idle, or in the doorway, for less than `IDLE_GRACE` (a new caller's request may be
  an instant behind its connection). So strangers cannot take more than half the cap from
  trusted callers, however slowly they send, and a token holder's new connection finds
  room while strangers hold any;
* when every connection is busy and trusted, accepting waits (new callers wait in the
  listen backlog) until one closes or turns idle.

Request headers are bounded here too: over `MAX_HEADER_BYTES` bytes (Tornado's read limit)
or `MAX_HEADER_FIELDS` fields, the connection answers a JSON 431 itself and closes, where
Tornado alone would drop it without a word (see `taskrunner.listener.streams`).

The default cap leaves descriptors for the work the connections ask for
(`taskrunner.listener.descriptors`). The server is Tornado's `HTTPServer` taken over where
Tornado has no public hook (its private attributes, named in
tests/listener/test_tornado_internals.py).
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from tornado.httputil import HTTPConnection, HTTPHeaders, HTTPMessageDelegate
from tornado.ioloop import IOLoop
from tornado.netutil import ssl_wrap_socket

from taskrunner.listener.accept import add_accept_handler
from taskrunner.listener.draining import DrainingHTTPServer
from taskrunner.listener.linger import Lingering
from taskrunner.listener.streams import (
    MAX_HEADER_BYTES,
    MAX_HEADER_FIELDS,
    OVERSIZED_HEADERS,
    ClientSSLStream,
    ClientStream,
)
from taskrunner.listener.tlsdoor import Doorway
from taskrunner.listener.tracked import TrackedRequest

log = logging.getLogger("taskrunner.connections")

IDLE_GRACE = 0.5
"""Seconds a connection that turned idle, or opened, is kept from being closed for room."""

_WARN_EVERY = 10.0  # seconds between two "at the cap" warnings

Trusts = Callable[[HTTPHeaders], bool]
"""Whether a request's headers carry what the instance asks of a caller (a valid token): a
decision of the layers above, passed in."""


def _has_body(headers: HTTPHeaders) -> bool:
    length = headers.get("Content-Length")
    return "Transfer-Encoding" in headers or (length is not None and
                                              length.strip().lstrip("0") != "")


def _trust_all(headers: HTTPHeaders) -> bool:
    return True


class CappedHTTPServer(DrainingHTTPServer):
    """A `DrainingHTTPServer` that holds at most ``max_connections`` client connections,
    strangers at most half of them when others need room."""

    def initialize(self, *args: Any, max_connections: int = 0, trusts: Trusts = _trust_all,
                   **kwargs: Any) -> None:
        """``max_connections``: the cap; 0, no cap (`Server` resolves the config's 0).
        ``trusts``: tells a trusted request by its headers."""
        kwargs.setdefault("max_header_size", MAX_HEADER_BYTES)
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.trusts = trusts
        # Idle connections (and since when), the one idle longest first; strangers whose
        # body is arriving, the oldest first; trusted ones; shed ones until on_close.
        self._idle: OrderedDict[Any, float] = OrderedDict()
        self._draining: OrderedDict[Any, None] = OrderedDict()
        self._trusted: set[Any] = set()
        self._shed: set[Any] = set()
        self._room_waiters: list[Callable[[], None]] = []
        self._grace_timer: object | None = None
        self.shed_total = 0
        self._shed_unreported = 0
        self._last_warning: dict[str, float] = {}
        # HTTPS: new connections before their first byte (taskrunner.listener.tlsdoor),
        # oldest first; bounded by the idle timeout, as slow request headers are.
        self._doorways: dict[Doorway, None] = {}
        self._doorway_timeout = float(kwargs.get("idle_connection_timeout") or 3600)
        self._lingering: dict[Lingering, None] = {}

    @property
    def held_connections(self) -> int:
        """Client connections open and not yet shed, those in the HTTPS doorway and in a
        lingering close included."""
        return (len(self._connections) - len(self._shed) + len(self._doorways)
                + len(self._lingering))

    @property
    def strangers(self) -> int:
        """Connections held that are not trusted (lingering ones aside: they are closing)."""
        return (len(self._connections) - len(self._shed) - len(self._trusted)
                + len(self._doorways))

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        """Listen on ``sockets``, accepting only while under the cap."""
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = add_accept_handler(
                sock, self._handle_connection, gate=self)

    # -- the accept gate (see taskrunner.listener.accept.AcceptGate) ----------------------

    def has_room(self) -> bool:
        """True while under the cap."""
        return self.max_connections <= 0 or self.held_connections < self.max_connections

    def make_room(self) -> bool:
        """Room for a connection known to be waiting: at the cap, close the one worth
        least (see the module's docstring); False if none may go."""
        if self.has_room():
            return True
        crowded = self.strangers >= max(1, self.max_connections // 2)
        victim = self._victim(trusted_too=not crowded)
        if victim is None:
            return False
        victim()
        self._count_shed()
        return True

    def when_room(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when a connection closes, turns idle, or has been idle
        (or in the doorway) for `IDLE_GRACE`."""
        self._room_waiters.append(callback)
        if self._grace_timer is None:
            # Both are in the order their connections turned idle or opened.
            now = time.monotonic()
            ripe = [next((at for at in (since + IDLE_GRACE for since in times) if at > now),
                         None)
                    for times in (self._idle.values(), (d.opened for d in self._doorways))]
            later = [at for at in ripe if at is not None]
            if later:
                self._grace_timer = IOLoop.current().call_later(min(later) - now,
                                                                self._grace_over)
        self._warn("busy", f"at --max-connections {self.max_connections} with every "
                   "connection busy (or opened a moment ago): new connections wait in the "
                   "listen backlog")

    def _grace_over(self) -> None:
        self._grace_timer = None
        self._wake_waiters()

    def _victim(self, trusted_too: bool) -> Callable[[], None] | None:
        if self._lingering:
            return next(iter(self._lingering)).close
        ripe = time.monotonic() - IDLE_GRACE
        # The oldest of those that have sent nothing at all.
        doorway = next(iter(self._doorways), None)
        if doorway is not None and doorway.opened <= ripe:
            return doorway.close
        if self._draining:
            return functools.partial(self._shed_connection, next(iter(self._draining)))
        for trusted in (False, True) if trusted_too else (False,):
            for server_conn, since in self._idle.items():
                if since > ripe:
                    break  # and so are those after it
                if (server_conn in self._trusted) == trusted and self._quiet(server_conn):
                    return functools.partial(self._shed_connection, server_conn)
        return None

    # -- serving connections -------------------------------------------------------------

    def _handle_connection(self, connection: socket.socket, address: Any) -> None:
        # Tornado's (private) entry for an accepted connection, which makes its stream:
        # taken over to make a ClientStream. Over HTTPS the connection first waits in a
        # doorway for its first byte.
        if self.ssl_options is None:
            self._serve(ClientStream, connection, address)
            return
        doorway = Doorway(connection, address, self._doorway_timeout, self._serve_tls,
                          self._left_doorway, self._linger)
        self._doorways[doorway] = None

    def _serve_tls(self, connection: socket.socket, address: Any) -> None:
        assert self.ssl_options is not None
        try:
            connection = ssl_wrap_socket(connection, self.ssl_options, server_side=True,
                                         do_handshake_on_connect=False)
        except (ssl.SSLError, OSError) as exc:  # as Tornado: the client left already
            log.debug("TLS connection from %s dropped: %s", address, exc)
            connection.close()
            return
        self._serve(ClientSSLStream, connection, address)

    def _serve(self, kind: type[ClientStream], connection: socket.socket,
               address: Any) -> None:
        stream = kind(connection, max_buffer_size=self.max_buffer_size,
                      read_chunk_size=self.read_chunk_size)
        stream.hand_over = self._linger
        self.handle_stream(stream, address)

    def _linger(self, sock: socket.socket, answer: bytes) -> None:
        if answer is OVERSIZED_HEADERS:
            log.info("request headers from %s over %s bytes: answered 431",
                     _peer(sock), MAX_HEADER_BYTES)
        lingering = Lingering(sock, answer, self._lingered)
        if not lingering.closed:
            self._lingering[lingering] = None

    def _lingered(self, lingering: Lingering) -> None:
        self._lingering.pop(lingering, None)
        self._wake_waiters()

    def _left_doorway(self, doorway: Doorway) -> None:
        del self._doorways[doorway]
        self._wake_waiters()

    async def close_all_connections(self) -> None:
        """Close the connections in the HTTPS doorway, then, as Tornado, every other one,
        then those in a lingering close."""
        for doorway in list(self._doorways):
            doorway.close()
        await super().close_all_connections()
        for lingering in list(self._lingering):
            lingering.close()

    # -- tracking ----------------------------------------------------------------------

    def start_request(self, server_conn: object,
                      request_conn: HTTPConnection) -> HTTPMessageDelegate:
        # Tornado calls this when a connection is ready for its next request: idle now.
        stream = self._stream(server_conn)
        stream.awaiting_headers, stream.body_pending = True, False
        self._draining.pop(server_conn, None)
        self._idle[server_conn] = time.monotonic()
        self._idle.move_to_end(server_conn)
        self._wake_waiters()
        return TrackedRequest(request_conn, super().start_request(server_conn, request_conn),
                              functools.partial(self._headers_in, server_conn),
                              functools.partial(self._body_in, server_conn))

    def _headers_in(self, server_conn: Any, headers: HTTPHeaders) -> str | None:
        """Record a request's arrival; the reason to refuse it with a 431, if any."""
        self._idle.pop(server_conn, None)
        stream = self._stream(server_conn)
        stream.awaiting_headers = False
        stream.trusted = self.trusts(headers)
        stream.body_pending = _has_body(headers)
        if stream.trusted:
            self._trusted.add(server_conn)
        else:
            self._trusted.discard(server_conn)
            if stream.body_pending:  # a body the instance will not use: first to go
                self._draining[server_conn] = None
                self._wake_waiters()
        fields = sum(1 for _ in headers.get_all())
        if fields > MAX_HEADER_FIELDS:
            log.info("request from %s with %s header fields: answered 431",
                     _peer(stream.socket), fields)
            return f"the request has {fields} header fields; the limit is {MAX_HEADER_FIELDS}"
        return None

    def _body_in(self, server_conn: Any) -> None:
        self._stream(server_conn).body_pending = False
        self._draining.pop(server_conn, None)

    def on_close(self, server_conn: Any) -> None:
        self._idle.pop(server_conn, None)
        self._draining.pop(server_conn, None)
        self._trusted.discard(server_conn)
        self._shed.discard(server_conn)
        super().on_close(server_conn)
        self._wake_waiters()

    @staticmethod
    def _stream(server_conn: Any) -> ClientStream:
        stream = server_conn.stream
        assert isinstance(stream, ClientStream)
        return stream

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
        self._idle.pop(server_conn, None)
        self._draining.pop(server_conn, None)
        self._trusted.discard(server_conn)
        self._shed.add(server_conn)
        stream = self._stream(server_conn)
        stream.evicted = True
        stream.close()  # its serving loop ends, then on_close

    def _count_shed(self) -> None:
        self.shed_total += 1
        self._shed_unreported += 1
        if self._warn("shed", f"at --max-connections {self.max_connections}: closed "
                      f"{self._shed_unreported} strangers' and idle connections for new "
                      "ones"):
            self._shed_unreported = 0

    def _warn(self, kind: str, message: str) -> bool:
        # Once per _WARN_EVERY seconds at most for each kind: a flood must not flood the
        # log too.
        now = time.monotonic()
        if now - self._last_warning.get(kind, float("-inf")) < _WARN_EVERY:
            return False
        log.warning("%s", message)
        self._last_warning[kind] = now
        return True


def _peer(sock: socket.socket | None) -> str:
    try:
        return str(sock.getpeername()[0]) if sock is not None else "?"
    except OSError:
        return "?"

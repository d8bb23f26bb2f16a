"""The draining server: stop listening without resetting queued connections, then wait
for the last open connection to close.

Recycling (``--max-requests``, SIGHUP: `taskrunner.web.recycle`, which decides when) goes
away this way: connections the kernel has completed but Tornado has not accepted yet would
be reset by closing the listening socket, after nginx may have written a request on them,
so they are accepted first. Accepting pauses instead of spinning when the process is out
of descriptors (`taskrunner.listener.accept`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterable
from typing import Any

from tornado.httpserver import HTTPServer

from taskrunner.listener.accept import accept_waiting, add_accept_handler


class DrainingHTTPServer(HTTPServer):
    """An `HTTPServer` that stops listening without resetting queued connections and can
    wait for its last connection to close."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self._no_connections = asyncio.Event()

    def on_close(self, server_conn: Any) -> None:
        super().on_close(server_conn)
        if not self._connections:
            self._no_connections.set()

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        """Listen on ``sockets``, pausing rather than spinning when out of descriptors."""
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = add_accept_handler(sock, self._handle_connection)

    @property
    def open_connections(self) -> int:
        """How many client connections are open."""
        return len(self._connections)

    def stop_accepting(self) -> None:
        """Take the connections waiting in the listen backlog, then close the listeners.

        Connections the kernel has completed but Tornado has not accepted yet would be
        reset by close(), after nginx may have written a request on them. Between the last
        accept() and close() nothing yields to the event loop.
        """
        for sock in self._sockets.values():
            with contextlib.suppress(OSError):
                accept_waiting(sock, self._handle_connection)
        self.stop()

    async def wait_no_connections(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no connection is open; True if none is."""
        if not self._connections:
            return True
        self._no_connections.clear()
        try:
            await asyncio.wait_for(self._no_connections.wait(), timeout)
        except TimeoutError:
            return False
        return True

"""Recycling (``--max-requests N``, or SIGHUP): go away without losing a request.

Like uWSGI's ``-R``: after N answered requests (or on SIGHUP: a rolling restart, e.g.
``supervisorctl signal HUP 'taskrunner:*'``) the instance drains and exits 0, and its
supervisor (supervisord in the stack) starts a fresh process on the same port. Behind nginx
with upstream keepalive the hard part is the race between nginx reusing an idle keepalive
connection and the instance closing it: a request written on a connection the instance is
closing fails, and nginx must not resend a POST. So the instance never closes a connection
that nginx may still use:

1. Wait until the instance has lived `MIN_LIFETIME` seconds (supervisord treats an exit
   before ``startsecs`` as a failed start) and, with ``--recycle-lock``, until it holds the
   deployment's recycle lock and no sibling recycled in the last `COOLDOWN` seconds, so the
   instances of a stack never recycle all at once (that would leave nginx nobody to ask).
2. Accept what is already in the listen backlog, then close the listening socket
   (`taskrunner.listener.draining`). nginx's new connections are refused, which nginx
   retries on another instance (``proxy_next_upstream error``: the request was never sent,
   so even a POST is safe to retry).
3. Keep serving the connections that are open, answering with ``Connection: close``: nginx
   drops each of them after its response. nginx closes idle ones itself after its upstream
   ``keepalive_timeout`` (taskrunner/deploy/templates/nginx-http.conf.template).
4. When no connection is left, or after `LINGER` seconds (longer than that timeout), shut
   down as on SIGTERM: running commands get ``--grace`` seconds, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.web import OutputTransform, RequestHandler

from taskrunner.listener.draining import DrainingHTTPServer
from taskrunner.web.context import InstanceContext

log = logging.getLogger("taskrunner.server")

MIN_LIFETIME = 2.0
"""Seconds an instance lives at least; more than supervisord's ``startsecs=1``."""

COOLDOWN = 5.0
"""Seconds between two recycles in one deployment (``--recycle-lock``): time for the last
one's successor to start and for nginx to send it requests again (``fail_timeout=2s``)."""

LINGER = 15.0
"""Seconds to wait for nginx to close the open connections; more than nginx's upstream
``keepalive_timeout``, which taskrunner/deploy/templates/nginx-http.conf.template sets and
docs/deploy.md explains."""

_RETRY = 0.5


def drain_transform(ctx: InstanceContext) -> type[OutputTransform]:
    """An output transform that adds ``Connection: close`` while ``ctx.draining``."""

    class DrainTransform(OutputTransform):
        def __init__(self, request: HTTPServerRequest) -> None:
            pass

        def transform_first_chunk(
            self, status_code: int, headers: Any, chunk: bytes, finishing: bool
        ) -> tuple[int, Any, bytes]:
            if ctx.draining:
                headers["Connection"] = "close"
            return status_code, headers, chunk

    return DrainTransform


class RecycleLock:
    """A file lock plus the time of the last recycle, shared by one deployment's instances.

    Held from the start of a drain until the process exits (the kernel drops an ``flock``
    when its holder dies, whatever the cause).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1

    def try_acquire(self) -> bool:
        """Take the lock if it is free and the last recycle is `COOLDOWN` seconds old."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            log.warning("recycle lock %s unusable (%s): recycling without it", self.path, exc)
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        last = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        try:
            recent = time.time() - float(last) < COOLDOWN
        except ValueError:
            recent = False  # a new or empty file
        if recent:
            os.close(fd)  # closing the fd releases the lock
            return False
        self._fd = fd
        return True

    def stamp(self) -> None:
        """Record now as the time of the last recycle (the lock stays held)."""
        if self._fd >= 0:
            data = f"{time.time():.3f}\n".encode()
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)


class Recycler:
    """Counts answered requests; after ``max_requests`` drains the server and asks it to exit."""

    def __init__(self, ctx: InstanceContext, http: DrainingHTTPServer, max_requests: int,
                 request_exit: Callable[[], None], lock_path: str = "") -> None:
        self.ctx = ctx
        self.http = http
        self.max_requests = max_requests
        self.request_exit = request_exit
        self.lock = RecycleLock(lock_path) if lock_path else None
        self.served = 0
        self._scheduled = False
        self._task: asyncio.Task[None] | None = None

    def request_done(self, handler: RequestHandler) -> None:
        """Count one answered request (an observer of the app)."""
        self.served += 1
        if self.served >= self.max_requests:
            self.recycle()

    def recycle(self) -> None:
        """Drain and exit as soon as it is this instance's turn (what SIGHUP does)."""
        if not self._scheduled:
            self._scheduled = True
            self._task = asyncio.get_running_loop().create_task(self._recycle())

    async def _recycle(self) -> None:
        await self._wait_for_turn()
        log.info("recycling after %s requests: no longer accepting connections", self.served)
        self.ctx.begin_draining("recycling")
        if self.lock is not None:
            self.lock.stamp()
        self.http.stop_accepting()
        if not await self.http.wait_no_connections(LINGER):
            log.warning("recycle: %s connections still open after %ss; closing them",
                        self.http.open_connections, LINGER)
        if self.lock is not None:
            self.lock.stamp()
        self.request_exit()

    async def _wait_for_turn(self) -> None:
        young = MIN_LIFETIME - (time.time() - self.ctx.started)
        if young > 0:
            await asyncio.sleep(young)
        while self.lock is not None and not self.lock.try_acquire():
            await asyncio.sleep(_RETRY)  # a sibling recycles, or did a moment ago

"""`Server`: one instance's lifecycle — startup, serving, and shutdown in stages.

Shutdown (on SIGTERM or SIGINT): stop listening and refuse new commands, let the running
ones finish for up to ``--grace`` seconds, SIGKILL the groups of those still running, let
their responses go out, then close every connection.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from taskrunner.app import make_app
from taskrunner.config import Config
from taskrunner.context import InstanceContext
from taskrunner.engine import ProcessEngine
from taskrunner.launcher import Launcher
from taskrunner.metrics import Metrics, instance_name
from taskrunner.recycle import DrainingHTTPServer, Recycler

log = logging.getLogger("taskrunner.server")

# Tornado's own body limit drops the connection; BodyHandler enforces --max-body with a 413.
_UNREACHABLE_BODY_LIMIT = 1 << 62


class Server:
    """One taskrunner instance: listens, serves, and shuts down cleanly."""

    def __init__(self, config: Config, handle_signals: bool = True) -> None:
        self.config = config
        self.handle_signals = handle_signals
        self.ctx: InstanceContext | None = None
        self.http: HTTPServer | None = None
        self.sockets: list[socket.socket] = []
        self._should_exit = asyncio.Event()
        self.recycler: Recycler | None = None

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``--port 0``)."""
        return int(self.sockets[0].getsockname()[1])

    async def serve(self) -> None:
        """Start, serve until asked to stop, then shut down."""
        await self.startup()
        try:
            await self._should_exit.wait()
        finally:
            await self.shutdown()

    def request_exit(self) -> None:
        """Ask `serve` to shut down (what SIGTERM and SIGINT do)."""
        self._should_exit.set()

    async def startup(self) -> None:
        """Bind the socket, build the engine and the app, start serving."""
        config = self.config
        engine = ProcessEngine(max_output=config.max_output)
        self.sockets = bind_sockets(config.port, config.address, backlog=2048)
        metrics = Metrics(instance_name(config, self.port), running=lambda: engine.running)
        self.ctx = InstanceContext(
            config=config, engine=engine, launcher=Launcher(engine, observer=metrics),
            port=self.port, metrics=metrics,
        )
        self.ctx.observers.append(metrics.request_done)
        self.http = DrainingHTTPServer(
            make_app(self.ctx),
            xheaders=True,
            max_body_size=_UNREACHABLE_BODY_LIMIT,
        )
        self.recycler = Recycler(self.ctx, self.http, config.max_requests, self.request_exit,
                                 config.recycle_lock)
        if config.max_requests:
            self.ctx.observers.append(self.recycler.request_done)
        self.http.add_sockets(self.sockets)
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_exit)
            # SIGHUP: recycle now; a rolling restart that loses no request behind nginx.
            loop.add_signal_handler(signal.SIGHUP, self.recycler.recycle)
        log.info("listening on %s:%s (pid %s)", config.address, self.port, self.ctx.pid)

    async def shutdown(self) -> None:
        """Stop listening, give running commands ``--grace`` seconds, then kill the rest."""
        assert self.ctx is not None and self.http is not None
        ctx, engine = self.ctx, self.ctx.engine
        ctx.shutting_down = True
        ctx.draining = True
        self.http.stop()
        if engine.running:
            log.info("shutting down: waiting up to %ss for %s running commands",
                     self.config.grace, engine.running)
        if not await engine.wait_all(self.config.grace):
            log.warning("grace period over: killing %s commands", engine.running)
            engine.kill_all()
            await engine.wait_all(5.0)
        await ctx.wait_idle(2.0)
        await self.http.close_all_connections()
        engine.close()
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("stopped")

"""`Server`: one instance's lifecycle — startup, serving, and shutdown in stages.

Shutdown (on SIGTERM or SIGINT): stop listening and refuse new commands, let the running
ones finish for up to ``--grace`` seconds, SIGKILL the groups of those still running, let
their responses go out, close every connection, then give completion callbacks still
being delivered a short grace (`taskrunner.jobs.callbacks.SHUTDOWN_GRACE`) before they are
recorded failed.

SIGHUP: with ``--callers``, re-read the callers file (requests in flight keep the caller
they were given; a file that cannot be used keeps the old callers, and the log says why);
without it, recycle (drain and exit 0 for the supervisor to restart: a rolling restart).
SIGUSR2 always recycles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from typing import TYPE_CHECKING

from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPHeaders
from tornado.netutil import bind_sockets

from taskrunner.config import Config
from taskrunner.errors import (
    IndexUnreachable,
    SpawnError,
    StartupError,
    StoreError,
    Unauthorized,
)
from taskrunner.jobs.callbacks import (
    SHUTDOWN_GRACE,
    CallbackHosts,
    CallbackSender,
    load_secret,
)
from taskrunner.jobs.registry import JobRegistry
from taskrunner.jobs.state_url import state_url
from taskrunner.listener.connections import CappedHTTPServer
from taskrunner.listener.descriptors import default_max_connections
from taskrunner.metrics import Metrics
from taskrunner.process.admission import Admission, default_max_running
from taskrunner.process.allowlist import Allowlist
from taskrunner.process.cgroup_pool import CgroupPool, cgroups_from_config
from taskrunner.process.containment import Containment, containment_from_config
from taskrunner.process.engine import ProcessEngine
from taskrunner.process.environment import base_environment, check_pass_env
from taskrunner.process.heap import HeapTrimmer
from taskrunner.process.launcher import Launcher
from taskrunner.process.watchdog import Watchdog, WatchdogError
from taskrunner.web.app import make_app
from taskrunner.web.auth import load_token
from taskrunner.web.callers import Callers, implicit_callers, load_callers
from taskrunner.web.context import InstanceContext
from taskrunner.web.recycle import Recycler
from taskrunner.web.tls import check_protected, server_context

if TYPE_CHECKING:
    from taskrunner.jobs.index import Backend
    from taskrunner.jobs.store import JobStore

log = logging.getLogger("taskrunner.server")

# Tornado's own body limit drops the connection; BodyHandler enforces --max-body with a 413.
_UNREACHABLE_BODY_LIMIT = 1 << 62


class Server:
    """One taskrunner instance: listens, serves, and shuts down cleanly."""

    def __init__(self, config: Config, handle_signals: bool = True,
                 watchdog: bool | None = None) -> None:
        self.config = config
        self.handle_signals = handle_signals
        # A real process instance wants both; an in-process test instance usually neither.
        self.use_watchdog = handle_signals if watchdog is None else watchdog
        self.watchdog: Watchdog | None = None
        self.ctx: InstanceContext | None = None
        self.http: HTTPServer | None = None
        self.sockets: list[socket.socket] = []
        self._should_exit = asyncio.Event()
        self.recycler: Recycler | None = None
        self.trimmer = HeapTrimmer()
        self._base_env: dict[str, str] = {}
        self._callers: Callers | None = None

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
        """Bind the socket, build the engine and the app, start serving.

        Raise `StartupError` (before binding) if the configuration is unsafe or unusable.
        """
        config = self.config
        token = load_token(config, os.environ)
        check_protected(config)
        check_pass_env(config.pass_env)
        index_url = state_url(config)
        # What is made before _startup is undone if anything after it fails.
        with contextlib.ExitStack() as undo:
            containment = containment_from_config(config, os.environ)
            undo.callback(containment.close)
            # The commands' environment: a clean base, --pass-env, then the wrapper's.
            base_env = {**base_environment(os.environ, config.pass_env,
                                           containment.env.get("HOME")), **containment.env}
            try:
                allowlist = Allowlist(config.allow, base_env) if config.allow else None
            except SpawnError as exc:
                raise StartupError(f"--allow: {exc.message}") from None
            # Idle cgroups kept: as many as may run at once.
            cgroups = cgroups_from_config(config,
                                          keep=config.max_running or default_max_running())
            if cgroups is not None:
                undo.callback(cgroups.close)
            undo.callback(self._close_callers)  # those loaded before a later failure
            await self._startup(config, token, containment, base_env, allowlist, cgroups,
                                index_url)
            undo.pop_all()

    async def _startup(self, config: Config, token: str | None, containment: Containment,
                       base_env: dict[str, str], allowlist: Allowlist | None,
                       cgroups: CgroupPool | None, index_url: str) -> None:
        tls = server_context(config.certfile, config.keyfile) if config.certfile else None
        callbacks = CallbackSender(
            CallbackHosts(config.callback_allow),
            load_secret(config.callback_secret_file) if config.callback_secret_file else None,
            max_clients=config.max_jobs)
        self._base_env = base_env
        callers = self._load_callers(None) if config.callers else implicit_callers(token)
        self._callers = callers
        # The job index first, before anything is started that would then need stopping,
        # and before the port listens: an instance waiting for its index's server must not
        # hold a socket whose connections nobody answers. Only an instance named after a
        # port the kernel picks (--port 0) learns its name by listening first.
        named = bool(config.instance) or config.port != 0
        store = await _open_store(config, index_url, config.instance or str(config.port),
                                  config.port, callers.realm) if named else None
        try:
            self.sockets = bind_sockets(config.port, config.address, backlog=2048)
        except OSError as exc:
            if store is not None:
                store.close()
            raise StartupError(f"cannot listen on {config.address}:{config.port}: "
                               f"{exc.strerror or exc}") from None
        instance = config.instance or str(self.port)
        try:
            if not named:
                store = await _open_store(config, index_url, instance, self.port, callers.realm)
            if self.use_watchdog:
                try:
                    self.watchdog = Watchdog()
                except WatchdogError as exc:
                    if store is not None:
                        store.close()
                    raise StartupError(str(exc)) from None
                self.watchdog.watch()
        except StartupError:
            for sock in self.sockets:
                sock.close()
            raise
        engine = ProcessEngine(
            max_output=config.max_output, base_env=base_env,
            on_spawn=self.watchdog.spawned if self.watchdog else None,
            on_reap=self.watchdog.reaped if self.watchdog else None,
            on_large_output=self.trimmer.request,
        )
        admission = Admission.from_config(config)
        launcher = Launcher(engine, allowlist=allowlist, containment=containment,
                            admission=admission, cgroups=cgroups)
        jobs = JobRegistry(
            launcher, instance, max_output=config.max_output, job_ttl=config.job_ttl,
            max_jobs=config.max_jobs, store=store, callbacks=callbacks,
        )
        metrics = Metrics(
            instance, running=lambda: engine.running, queued=lambda: admission.queued,
            job_states=lambda: (job.state for job in jobs.jobs.values()),
        )
        launcher.observer = metrics
        metrics.watch_callbacks(callbacks)
        admission.on_wait = metrics.queue_waited
        self.ctx = InstanceContext(
            config=config, engine=engine, launcher=launcher, port=self.port, callers=callers,
            instance=instance, metrics=metrics, jobs=jobs,
        )
        self.ctx.observers.append(metrics.request_done)
        try:
            jobs.restore()
        except StoreError as exc:
            for sock in self.sockets:
                sock.close()
            engine.close()
            if self.watchdog is not None:
                self.watchdog.close()
            raise StartupError(str(exc)) from None
        if store is not None:
            metrics.watch_job_store(store)
        self.http = CappedHTTPServer(
            make_app(self.ctx),
            max_connections=(config.max_connections
                             or default_max_connections(admission.max_running)),
            trusts=self._trusts,
            # Not xheaders: web.access.apply_proxy_address reads X-Real-IP without a getaddrinfo.
            max_body_size=_UNREACHABLE_BODY_LIMIT,
            # Idle connections, and slow request headers, are bounded by idle_timeout; a
            # slow body by --body-timeout in BodyHandler (which ends once the body is in,
            # so a long /run is not affected).
            idle_connection_timeout=config.idle_timeout,
            # The handshake happens on the connection's first read, so a client that
            # never finishes it is bounded by idle_timeout like slow headers are.
            ssl_options=tls,
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
            # SIGHUP: re-read the callers file, or (without one) recycle now: a rolling
            # restart that loses no request behind nginx.
            loop.add_signal_handler(signal.SIGHUP, self.reload_callers if config.callers
                                    else self.recycler.recycle)
            # SIGUSR2: recycle now, with or without --callers.
            loop.add_signal_handler(signal.SIGUSR2, self.recycler.recycle)
        loop_module = type(asyncio.get_running_loop()).__module__
        log.info("listening on %s:%s (%s, pid %s, instance %s, event loop %s)",
                 config.address, self.port, "https" if tls else "http", self.ctx.pid,
                 instance, loop_module.partition(".")[0])
        if config.callers:
            log.info("callers from %s: %s", config.callers, ", ".join(callers.names))

    def _close_callers(self) -> None:
        if self._callers is not None:
            self._callers.close()

    def _trusts(self, headers: HTTPHeaders) -> bool:
        # Which connections are strangers to the cap (taskrunner.listener.connections):
        # asked of the callers the handlers will ask, as they are now.
        assert self.ctx is not None
        try:
            self.ctx.callers.identify(headers.get("Authorization"))
        except Unauthorized:
            return False
        return True

    def _load_callers(self, previous: Callers | None) -> Callers:
        return load_callers(self.config.callers, self.config, os.environ, self._base_env,
                            containment_from_config, previous)

    def reload_callers(self) -> None:
        """Re-read ``--callers`` (what SIGHUP does with it); keep the old callers if the file
        cannot be used, and log why."""
        assert self.ctx is not None
        try:
            callers = self._load_callers(self.ctx.callers)
        except StartupError as exc:
            log.error("callers not reloaded, the previous ones stay: %s", exc)
            return
        previous, self.ctx.callers = self.ctx.callers, callers  # each request sees one set
        previous.retire()  # their sandboxes go once no command of theirs runs
        log.info("callers reloaded from %s: %s", self.config.callers, ", ".join(callers.names))

    async def shutdown(self) -> None:
        """Stop listening, give running commands ``--grace`` seconds, then kill the rest."""
        assert self.ctx is not None and self.http is not None
        ctx, engine = self.ctx, self.ctx.engine
        ctx.shutting_down = True
        ctx.draining = True
        self.http.stop()
        if ctx.launcher.admission is not None:
            ctx.launcher.admission.close()  # queued requests get a 503 now
        if engine.running:
            log.info("shutting down: waiting up to %ss for %s running commands",
                     self.config.grace, engine.running)
        if not await engine.wait_all(self.config.grace):
            log.warning("grace period over: killing %s commands", engine.running)
            if ctx.jobs is not None:
                ctx.jobs.cancel_running()
            engine.kill_all()
            await engine.wait_all(5.0)
        await ctx.wait_idle(2.0)
        await self.http.close_all_connections()
        if ctx.jobs is not None:
            await ctx.jobs.stop_callbacks(SHUTDOWN_GRACE)
        engine.close()
        if ctx.launcher.cgroups is not None:
            ctx.launcher.cgroups.close()
        ctx.launcher.containment.close()
        ctx.callers.close()  # the callers' sandboxes (those of replaced sets went already)
        self.trimmer.close()
        if self.watchdog is not None:
            self.watchdog.close()
        if ctx.jobs is not None:
            await ctx.jobs.close_reads()
            ctx.jobs.close()  # the final states of the jobs just killed reach the store
        if self.handle_signals:
            # We are exiting anyway: a second SIGTERM now must not turn exit 0 into a kill.
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
                signal.signal(sig, signal.SIG_IGN)
        log.info("stopped")


async def _open_store(config: Config, url: str, instance: str, port: int,
                      realm: str) -> JobStore | None:
    # The job index of --state-dir or --state-url, opened. A server that does not answer
    # is waited for (one warning, then a try every few seconds), so that hosts and their
    # index may start in any order, after a power cut say, and no supervisor gives up.
    delay = 1.0
    while True:
        try:
            return _job_store(config, url, instance, port, realm)
        except IndexUnreachable as exc:
            if delay == 1.0:
                log.warning("%s; waiting for it (tried again every few seconds)", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _job_store(config: Config, url: str, instance: str, port: int,
               realm: str) -> JobStore | None:
    # Imported here, not at the top: an instance without an index never loads sqlite3 or
    # psycopg.
    if not (config.state_dir or url):
        return None
    from taskrunner.jobs.store import JobStore

    backend: Backend
    if url:
        try:
            from taskrunner.jobs.backends.postgresql import PostgresIndex
        except ImportError as exc:
            raise StartupError(f"--state-url needs psycopg ({exc}): install taskrunner with "
                               "its postgresql extra, or requirements/serve.txt") from None
        backend = PostgresIndex(url)
    else:
        from taskrunner.jobs.backends.sqlite import SQLiteIndex

        backend = SQLiteIndex(config.state_dir)
    store = JobStore(backend, instance, realm=realm, lost_after=config.lost_after,
                     listening=f"{config.address}:{port}")
    try:
        store.open()
    except IndexUnreachable:
        raise
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    return store

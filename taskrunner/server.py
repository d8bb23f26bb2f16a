"""`Server`: one instance's lifecycle — startup in steps, serving, shutdown in stages.

Startup (`Server.startup`) is a row of small steps. Each makes one thing and at once puts
what undoes it on one `contextlib.AsyncExitStack`, so a step that fails — a `StartupError`
with one line, a cancellation while the index is awaited, anything — leaves the stack to
undo exactly what the steps before it made, newest first, and nothing else. A startup that
completes keeps the stack for `shutdown`.

Shutdown (on SIGTERM or SIGINT), in stages as uvicorn's: stop listening and refuse new
commands; let the running ones finish for up to ``--grace`` seconds; SIGKILL the groups of
those still running and let their responses go out; then unwind the stack: close every
connection, give completion callbacks still being delivered a short grace
(`taskrunner.jobs.callbacks.SHUTDOWN_GRACE`) before they are recorded failed, and undo the
other steps, newest first.

Under a service manager (systemd), the first step takes what it hands over: sockets of
socket activation, served instead of binding (`taskrunner.listener.activation`), and the
notify socket (`taskrunner.service_manager`): ``READY=1`` with the last step, ``STOPPING=1``
when draining begins.

SIGHUP: with ``--callers`` or ``--actions``, re-read those files (requests in flight keep
the caller and the action they were given; a file that cannot be used keeps the old set,
and the log says why); without either, recycle (drain and exit 0 for the supervisor to
restart: a rolling restart).
SIGUSR2 always recycles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPHeaders

from taskrunner.actions.actionfile import Actions, load_actions
from taskrunner.config import Config
from taskrunner.errors import SpawnError, StartupError, StoreError, Unauthorized
from taskrunner.jobs.callbacks import (
    SHUTDOWN_GRACE,
    CallbackHosts,
    CallbackSender,
    load_secret,
)
from taskrunner.jobs.open_store import open_store
from taskrunner.jobs.registry import JobRegistry
from taskrunner.jobs.state_url import state_url
from taskrunner.listener.activation import Activated, ActivationError, inherited_sockets
from taskrunner.listener.bind import bind_sockets
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
from taskrunner.service_manager import Notifier
from taskrunner.web.app import make_app
from taskrunner.web.auth import is_loopback, load_token
from taskrunner.web.callers import Callers, implicit_callers, load_callers
from taskrunner.web.context import InstanceContext
from taskrunner.web.peers import advertise_url, default_name, peer_context
from taskrunner.web.recycle import Recycler
from taskrunner.web.spans import Spans, open_spans
from taskrunner.web.tls import check_protected, server_context

if TYPE_CHECKING:
    from taskrunner.jobs.store import JobStore

log = logging.getLogger("taskrunner.server")

# Tornado's own body limit drops the connection; BodyHandler enforces --max-body with a 413.
_UNREACHABLE_BODY_LIMIT = 1 << 62

class Server:
    """One taskrunner instance: listens, serves, and shuts down cleanly."""

    def __init__(self, config: Config, handle_signals: bool = True,
                 watchdog: bool | None = None, service_manager: bool | None = None) -> None:
        self.config = config
        self.handle_signals = handle_signals
        # A real process instance wants these; an in-process test instance usually none:
        # the watchdog, and what a service manager hands the process (the notify socket,
        # activated sockets), which is read from and removed from the environment.
        self.use_watchdog = handle_signals if watchdog is None else watchdog
        self.use_service_manager = handle_signals if service_manager is None else service_manager
        self.notifier: Notifier | None = None
        self.activated: list[Activated] = []
        self.watchdog: Watchdog | None = None
        self.ctx: InstanceContext | None = None
        self.http: HTTPServer | None = None
        self.sockets: list[socket.socket] = []
        self._should_exit = asyncio.Event()
        self.recycler: Recycler | None = None
        self.trimmer = HeapTrimmer()
        self._base_env: dict[str, str] = {}
        self._undo: contextlib.AsyncExitStack | None = None  # what startup made; shutdown's

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

    # -- startup ---------------------------------------------------------------------------

    async def startup(self) -> None:
        """Make everything the instance needs, step by step, and start serving.

        Raise `StartupError` (one line) if the configuration is unsafe or unusable. Whatever
        stops a startup, what its earlier steps made is undone, newest first.
        """
        async with contextlib.AsyncExitStack() as undo:
            await self._start(undo)
            self._undo = undo.pop_all()  # from now on shutdown's to unwind

    async def _start(self, undo: contextlib.AsyncExitStack) -> None:
        # What a service manager hands over first: given sockets say where the instance
        # listens, and every check below sees that address.
        self._take_service_manager(undo)
        config = self.config
        # Checks that make nothing come first: refused here, there is nothing to undo.
        token = load_token(config, os.environ)
        check_protected(config)
        check_pass_env(config.pass_env)
        index_url = state_url(config)
        containment = self._contain(undo)
        # The commands' environment: a clean base, --pass-env, then the wrapper's.
        self._base_env = {**base_environment(os.environ, config.pass_env,
                                             containment.env.get("HOME")), **containment.env}
        allowlist = self._allow()
        cgroups = self._make_cgroups(undo)
        tls = server_context(config.certfile, config.keyfile) if config.certfile else None
        if config.peer_ca_file:
            peer_context(config.peer_ca_file)  # read now: a bad file stops the start
        secret = load_secret(config.callback_secret_file) if config.callback_secret_file else None
        callers = self._load_callers(undo, token)
        actions = load_actions(config.actions, config) if config.actions else Actions()
        # The job index before the port listens: an instance waiting for its index's server
        # must not hold a socket whose connections nobody answers. Its name is held in the
        # index from then on (a second process asking for it is refused) until the undo
        # gives it back, with the URL its siblings reach it at. Only an instance on a port
        # the kernel picks (--port 0) learns its default name and URL by listening first.
        named = config.port != 0 or bool(config.instance and config.advertise_url)
        store = await self._open_index(undo, index_url, config.port, callers) if named else None
        self._bind(undo)
        if not named:
            store = await self._open_index(undo, index_url, self.port, callers)
        # The watchdog before the engine: no command starts unguarded, and the watchdog is
        # let go only once the engine has ended every command (undone in reverse).
        self._start_watchdog(undo)
        # Before the engine: the run spans of the commands killed at shutdown are still
        # exported (undone after the engine).
        spans = self._open_spans(undo)
        engine = self._start_engine(undo)
        admission = Admission.from_config(config)
        launcher = Launcher(engine, allowlist=allowlist, containment=containment,
                            admission=admission, cgroups=cgroups)
        launcher.tracer = spans
        jobs = self._build_registry(undo, launcher, store, secret)
        ctx = self._build_context(engine, admission, launcher, jobs, callers)
        ctx.actions = actions
        undo.callback(ctx.action_wrappers.close)
        if spans is not None:
            ctx.observers.append(spans.request_done)
        # After the context: the metrics count the callbacks of the jobs found lost.
        self._restore_jobs(ctx, store)
        # The listener: bind (above), the HTTP server (connection cap, TLS door, draining),
        # recycling, then accepting, the last step that lets anyone in.
        http = self._make_http_server(ctx, admission, tls)
        recycler = self._start_recycler(ctx, http)
        self._listen(undo, http)
        self._handle_signals(undo, recycler)
        loop_module = type(asyncio.get_running_loop()).__module__
        log.info("listening on %s:%s (%s, pid %s, instance %s, event loop %s)",
                 config.address, self.port, "https" if tls else "http", ctx.pid,
                 ctx.instance, loop_module.partition(".")[0])
        if self.activated:
            log.info("serving the sockets the service manager gave: %s", ", ".join(
                f"fd {a.sock.fileno()} {a.name!r} {a.host}:{a.port}" for a in self.activated))
        if config.callers:
            log.info("callers from %s: %s", config.callers, ", ".join(callers.names))
        if config.actions:
            log.info("actions from %s: %s", config.actions, ", ".join(actions.names))
        # The last step: /readyz answers 200 from here on. Nothing above awaits once the
        # listener accepts, so a connection made while starting waits in the backlog and
        # meets a ready instance; a step that awaits there would be answered "starting".
        ctx.ready = True
        if self.notifier is not None:
            self.notifier.status = lambda: self._status(admission)
            self.notifier.ready(self._status(admission))

    def _take_service_manager(self, undo: contextlib.AsyncExitStack) -> None:
        # The notify socket (Type=notify) and the sockets of socket activation, if any.
        if not self.use_service_manager:
            return
        self.notifier = Notifier.from_environ(os.environ)
        if self.notifier is not None:
            undo.callback(self.notifier.close)
        try:
            self.activated = inherited_sockets(os.environ)
        except ActivationError as exc:
            raise StartupError(str(exc)) from None
        if not self.activated:
            return
        for each in self.activated:
            undo.callback(each.sock.close)  # the manager keeps its own copy
        # One address is the instance's (its name, the rules of the token, TLS and Host):
        # the most exposed one, so that a non-loopback socket among loopback ones is held
        # to the rules of its address; the Host rule answers to the others' addresses too.
        exposed = [a for a in self.activated if not is_loopback(a.host)]
        main = (exposed or self.activated)[0]
        self.activated = [main, *(a for a in self.activated if a is not main)]  # its port
        extra = tuple(a.host for a in self.activated[1:] if a.host not in ("0.0.0.0", "::"))
        self.config = replace(self.config, address=main.host, port=main.port,
                              allowed_host=self.config.allowed_host + extra)

    def _status(self, admission: Admission) -> str:
        # The service manager's status line (systemctl status).
        assert self.ctx is not None
        address = self.config.address
        where = f"[{address}]:{self.port}" if ":" in address else f"{address}:{self.port}"
        return f"serving on {where}, {self.ctx.engine.running} running, {admission.queued} queued"

    def _contain(self, undo: contextlib.AsyncExitStack) -> Containment:
        # The wrappers of every command; with --sandbox a work root, locked while we live.
        containment = containment_from_config(self.config, os.environ)
        undo.callback(containment.close)
        return containment

    def _allow(self) -> Allowlist | None:
        # Programs are resolved in the commands' environment, which the containment sets.
        if not self.config.allow:
            return None
        try:
            return Allowlist(self.config.allow, self._base_env)
        except SpawnError as exc:
            raise StartupError(f"--allow: {exc.message}") from None

    def _make_cgroups(self, undo: contextlib.AsyncExitStack) -> CgroupPool | None:
        # The instance's parent cgroups, locked while we live; idle cgroups are kept for as
        # many commands as may run at once.
        config = self.config
        cgroups = cgroups_from_config(config, keep=config.max_running or default_max_running())
        if cgroups is not None:
            undo.callback(cgroups.close)
        return cgroups

    def _load_callers(self, undo: contextlib.AsyncExitStack, token: str | None) -> Callers:
        # A caller's own sandbox is made here; the set closed at the end is the one in use
        # then (a reload retires the sets it replaces).
        callers = self._read_callers(None) if self.config.callers else implicit_callers(token)

        def close() -> None:
            (self.ctx.callers if self.ctx is not None else callers).close()

        undo.callback(close)
        return callers

    def _name(self, port: int) -> str:
        # The instance's name: in its job ids, the index, /healthz, metrics and spans.
        return self.config.instance or default_name(port)

    async def _open_index(self, undo: contextlib.AsyncExitStack, url: str, port: int,
                          callers: Callers) -> JobStore | None:
        config = self.config
        waiting = self.notifier.tell if self.notifier is not None else None
        store = await open_store(config, url, self._name(port), port,
                                 callers.realm, advertise_url(config, port), waiting)
        if store is not None:
            undo.callback(store.close)  # gives the instance's name back
        return store

    def _bind(self, undo: contextlib.AsyncExitStack) -> None:
        config = self.config
        if self.activated:  # bound and listening already; closed by their own undo
            self.sockets = [a.sock for a in self.activated]
            return
        try:
            self.sockets = bind_sockets(config.address, config.port, backlog=2048)
        except OSError as exc:
            raise StartupError(f"cannot listen on {config.address}:{config.port}: "
                               f"{exc.strerror or exc}") from None
        for sock in self.sockets:
            undo.callback(sock.close)

    def _start_watchdog(self, undo: contextlib.AsyncExitStack) -> None:
        if not self.use_watchdog:
            return
        try:
            self.watchdog = Watchdog()
        except WatchdogError as exc:
            raise StartupError(str(exc)) from None
        undo.callback(self.watchdog.close)
        self.watchdog.watch()

    def _open_spans(self, undo: contextlib.AsyncExitStack) -> Spans | None:
        # OTel spans only when the environment asks (web/spans.py); else nothing of
        # OpenTelemetry is imported.
        spans = open_spans(self._name(self.port), os.environ)
        if spans is not None:
            async def close() -> None:
                # The last export waits for the collector: not on the event loop.
                await asyncio.get_running_loop().run_in_executor(None, spans.close)

            undo.push_async_callback(close)
            log.info("exporting spans over OTLP/HTTP")
        return spans

    def _start_engine(self, undo: contextlib.AsyncExitStack) -> ProcessEngine:
        watchdog = self.watchdog
        undo.callback(self.trimmer.close)  # undone after the engine, which asks for trims
        engine = ProcessEngine(
            max_output=self.config.max_output, base_env=self._base_env,
            on_spawn=watchdog.spawned if watchdog else None,
            on_reap=watchdog.reaped if watchdog else None,
            on_large_output=self.trimmer.request,
        )
        undo.callback(engine.close)
        return engine

    def _build_registry(self, undo: contextlib.AsyncExitStack, launcher: Launcher,
                        store: JobStore | None, secret: bytes | None) -> JobRegistry:
        config = self.config
        callbacks = CallbackSender(CallbackHosts(config.callback_allow), secret,
                                   max_clients=config.max_jobs)
        jobs = JobRegistry(
            launcher, self._name(self.port), max_output=config.max_output,
            job_ttl=config.job_ttl, max_jobs=config.max_jobs, store=store, callbacks=callbacks,
        )

        async def close() -> None:
            await jobs.stop_callbacks(SHUTDOWN_GRACE)
            await jobs.close_reads()
            jobs.close()  # the final states of the jobs just killed reach the store

        undo.push_async_callback(close)
        return jobs

    def _build_context(self, engine: ProcessEngine, admission: Admission, launcher: Launcher,
                       jobs: JobRegistry, callers: Callers) -> InstanceContext:
        metrics = Metrics(
            jobs.instance, running=lambda: engine.running, queued=lambda: admission.queued,
            job_states=lambda: (job.state for job in jobs.jobs.values()),
        )
        launcher.observer = metrics
        metrics.watch_callbacks(jobs.callbacks)
        admission.on_wait = metrics.queue_waited
        self.ctx = InstanceContext(
            config=self.config, engine=engine, launcher=launcher, port=self.port,
            callers=callers, instance=jobs.instance, metrics=metrics, jobs=jobs,
        )
        self.ctx.observers.append(metrics.request_done)
        if self.notifier is not None:
            self.ctx.on_draining = self.notifier.stopping
        return self.ctx

    def _restore_jobs(self, ctx: InstanceContext, store: JobStore | None) -> None:
        # Starts the store's writer and the heartbeat: undone with the registry.
        try:
            ctx.jobs.restore()
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        if store is not None:
            ctx.metrics.watch_job_store(store)

    def _make_http_server(self, ctx: InstanceContext, admission: Admission,
                          tls: ssl.SSLContext | None) -> CappedHTTPServer:
        # Holds nothing until it listens.
        config = self.config
        self.http = CappedHTTPServer(
            make_app(ctx),
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
        return self.http

    def _start_recycler(self, ctx: InstanceContext, http: CappedHTTPServer) -> Recycler:
        config = self.config
        self.recycler = Recycler(ctx, http, config.max_requests, self.request_exit,
                                 config.recycle_lock)
        if config.max_requests:
            ctx.observers.append(self.recycler.request_done)
        return self.recycler

    def _listen(self, undo: contextlib.AsyncExitStack, http: CappedHTTPServer) -> None:
        http.add_sockets(self.sockets)

        async def close() -> None:
            http.stop()  # shutdown stopped listening already; a failed startup has not
            await http.close_all_connections()

        undo.push_async_callback(close)

    def _handle_signals(self, undo: contextlib.AsyncExitStack, recycler: Recycler) -> None:
        if not self.handle_signals:
            return
        loop = asyncio.get_running_loop()
        handlers: dict[signal.Signals, Callable[[], None]] = {
            signal.SIGTERM: self.request_exit,
            signal.SIGINT: self.request_exit,
            # SIGHUP: re-read the callers and actions files, or (without either) recycle
            # now: a rolling restart that loses no request behind nginx.
            signal.SIGHUP: (self.reload if self.config.callers or self.config.actions
                            else recycler.recycle),
            # SIGUSR2: recycle now, with or without --callers.
            signal.SIGUSR2: recycler.recycle,
        }
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
            undo.callback(_ignore_signal, loop, sig)

    # -- serving ---------------------------------------------------------------------------

    def _trusts(self, headers: HTTPHeaders) -> bool:
        # Which connections are strangers to the cap (taskrunner.listener.connections):
        # asked of the callers the handlers will ask, as they are now.
        assert self.ctx is not None
        try:
            self.ctx.callers.identify(headers.get("Authorization"))
        except Unauthorized:
            return False
        return True

    def _read_callers(self, previous: Callers | None) -> Callers:
        return load_callers(self.config.callers, self.config, os.environ, self._base_env,
                            containment_from_config, previous)

    def reload(self) -> None:
        """What SIGHUP does with ``--callers`` or ``--actions``: re-read each file given;
        each that cannot be used keeps its old set, and the log says why."""
        if self.config.callers:
            self.reload_callers()
        if self.config.actions:
            self.reload_actions()

    def reload_actions(self) -> None:
        """Re-read ``--actions``; keep the old actions if the file cannot be used, and log
        why. Requests in flight keep the action they found."""
        assert self.ctx is not None
        try:
            actions = load_actions(self.config.actions, self.config)
        except StartupError as exc:
            log.error("actions not reloaded, the previous ones stay: %s", exc)
            return
        self.ctx.actions = actions
        log.info("actions reloaded from %s: %s", self.config.actions, ", ".join(actions.names))

    def reload_callers(self) -> None:
        """Re-read ``--callers`` (what SIGHUP does with it); keep the old callers if the file
        cannot be used, and log why."""
        assert self.ctx is not None
        try:
            callers = self._read_callers(self.ctx.callers)
        except StartupError as exc:
            log.error("callers not reloaded, the previous ones stay: %s", exc)
            return
        previous, self.ctx.callers = self.ctx.callers, callers  # each request sees one set
        previous.retire()  # their sandboxes go once no command of theirs runs
        log.info("callers reloaded from %s: %s", self.config.callers, ", ".join(callers.names))

    # -- shutdown --------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop listening, give running commands ``--grace`` seconds, kill the rest, then
        undo every step of the startup, newest first."""
        assert self.ctx is not None and self._undo is not None
        self._stop_listening()
        if not await self._drain(self.config.grace):
            await self._force()
        await self.ctx.wait_idle(2.0)  # the responses of the commands just ended go out
        undo, self._undo = self._undo, None
        await undo.aclose()
        log.info("stopped")

    def _stop_listening(self) -> None:
        # New connections are refused and queued requests get a 503 now; responses say
        # Connection: close.
        assert self.ctx is not None and self.http is not None
        self.ctx.shutting_down = True
        self.ctx.begin_draining("shutting down")
        self.http.stop()
        if self.ctx.launcher.admission is not None:
            self.ctx.launcher.admission.close()

    async def _drain(self, grace: float) -> bool:
        # True if every running command ended within the grace.
        assert self.ctx is not None
        engine = self.ctx.engine
        if engine.running:
            log.info("shutting down: waiting up to %ss for %s running commands", grace,
                     engine.running)
        return await engine.wait_all(grace)

    async def _force(self) -> None:
        assert self.ctx is not None
        engine = self.ctx.engine
        log.warning("grace period over: killing %s commands", engine.running)
        if self.ctx.jobs is not None:
            self.ctx.jobs.cancel_running()
        engine.kill_all()
        await engine.wait_all(5.0)


def _ignore_signal(loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
    # Undoing a handler means ignoring the signal: we are exiting anyway, and a second
    # SIGTERM now must not turn exit 0 into a kill. The loop's handler goes first, so that
    # closing the loop does not put the default action back.
    loop.remove_signal_handler(sig)
    signal.signal(sig, signal.SIG_IGN)

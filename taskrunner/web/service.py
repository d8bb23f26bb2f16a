"""The service routes: the probes (``GET /healthz``, ``/livez``, ``/readyz``), ``GET /metrics``,
``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from taskrunner import __version__
from taskrunner.errors import NotReady, Unauthorized
from taskrunner.web import openapi
from taskrunner.web.base import JSONHandler


class ProbeHandler(JSONHandler):
    """Base of the probes (``/healthz``, ``/livez``, ``/readyz``): public, since a probe
    has no secret, and the same answer to every caller but for what `reader` allows."""

    public_methods = ("GET",)

    def reader(self) -> bool:
        """Whether more than the status may go out: a valid token of any caller, or an
        instance without a token. A wrong token is a stranger, not a 401: the route stays
        public. The answer varies with ``Authorization`` (``Vary``)."""
        self.set_header("Vary", "Authorization")
        try:
            self.caller = self.ctx.callers.identify(self.request.headers.get("Authorization"))
        except Unauthorized:
            return False
        return True

    def job_store(self) -> tuple[bool, dict[str, Any] | None]:
        """Whether the job index takes writes, and its detail (None without an index)."""
        store = self.ctx.jobs.store
        if store is None:
            return True, None
        healthy = store.healthy  # read once: the store's writer thread changes it
        return healthy, {"ok": healthy, "write_failures": store.write_failures,
                         "error": None if healthy else store.last_error}


class HealthHandler(ProbeHandler):
    """``GET /healthz``: is the instance up, and how busy. Public: probes need no token.

    On an instance with tokens (a token, or ``--callers``), a request without a valid one
    gets the status only (``ok`` or ``degraded``, what a probe needs): the pid, the version
    and the rest tell a stranger what to attack. Any caller's valid token gets the whole
    answer, as does every request to an instance without a token: with ``running``,
    ``queued`` and ``finished`` (commands ended since start), what the page charts for
    any caller (``/metrics`` is for ``admin`` only).
    """

    def get(self) -> None:
        # Still 200 when degraded: /run is served; POST /jobs is refused while the store fails.
        healthy, store = self.job_store()
        status = "ok" if healthy else "degraded"
        if not self.reader():
            self.write_json({"status": status})
            return
        admission = self.ctx.launcher.admission
        body: dict[str, Any] = {
            "status": status,
            "port": self.ctx.port,
            "instance": self.ctx.instance,
            "pid": self.ctx.pid,
            "running": self.ctx.engine.running,
            "queued": 0 if admission is None else admission.queued,
            "finished": self.ctx.metrics.ended,
            "version": __version__,
        }
        if store is not None:
            body["job_store"] = store
        self.write_json(body)


class LiveHandler(ProbeHandler):
    """``GET /livez``: the process and its event loop answer; ``{"status": "ok"}`` to
    everyone, starting, draining or degraded alike (restarting would mend none of them)."""

    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(ProbeHandler):
    """``GET /readyz``: may this instance be sent new requests.

    503 ``not_ready`` while starting and while draining (SIGTERM, a recycle), the reason in
    the message. Otherwise 200, ``ready``, or ``degraded`` while the job index fails: that
    does not make the instance unready, since ``/run`` still works and every instance shares
    the index, so failing readiness would take them all out at once. A stranger (see
    `ProbeHandler.reader`) gets the status only; a reader also the index's ``job_store``.
    """

    def get(self) -> None:
        reason = self.ctx.not_ready()
        if reason is not None:
            raise NotReady(reason)
        healthy, store = self.job_store()
        body: dict[str, Any] = {"status": "ready" if healthy else "degraded"}
        if self.reader() and store is not None:
            body["job_store"] = store
        self.write_json(body)


class MetricsHandler(JSONHandler):
    """``GET /metrics``: the instance's metrics in the Prometheus text format."""

    scope = "admin"

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.ctx.metrics.exposition())


class OpenAPIHandler(JSONHandler):
    """``GET /openapi.json``: the OpenAPI 3 document of every endpoint."""

    def get(self) -> None:
        self.write_json(openapi.document(self.ctx.config.max_timeout, self.ctx.actions))

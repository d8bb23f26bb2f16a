"""The service routes: ``GET /healthz``, ``GET /metrics``, ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from taskrunner import __version__
from taskrunner.errors import Unauthorized
from taskrunner.web import openapi
from taskrunner.web.base import JSONHandler


class HealthHandler(JSONHandler):
    """``GET /healthz``: is the instance up, and how busy. Public: probes need no token.

    On an instance with tokens (a token, or ``--callers``), a request without a valid one
    gets the status only (``ok`` or ``degraded``, what a probe needs): the pid, the version
    and the rest tell a stranger what to attack. Any caller's valid token gets the whole
    answer, as does every request to an instance without a token.
    """

    public_methods = ("GET",)

    def get(self) -> None:
        store = self.ctx.jobs.store
        # Still 200 when degraded: /run is served; POST /jobs is refused while the store fails.
        healthy = store is None or store.healthy
        status = "ok" if healthy else "degraded"
        self.set_header("Vary", "Authorization")
        if not self._reader():
            self.write_json({"status": status})
            return
        body: dict[str, Any] = {
            "status": status,
            "port": self.ctx.port,
            "instance": self.ctx.instance,
            "pid": self.ctx.pid,
            "running": self.ctx.engine.running,
            "version": __version__,
        }
        if store is not None:
            body["job_store"] = {"ok": healthy, "write_failures": store.write_failures,
                                 "error": None if healthy else store.last_error}
        self.write_json(body)

    def _reader(self) -> bool:
        # Whether the whole answer may go out; a wrong token is a stranger, not a 401:
        # the route stays public.
        try:
            self.caller = self.ctx.callers.identify(self.request.headers.get("Authorization"))
        except Unauthorized:
            return False
        return True


class MetricsHandler(JSONHandler):
    """``GET /metrics``: the instance's metrics in the Prometheus text format."""

    scope = "admin"

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.ctx.metrics.exposition())


class OpenAPIHandler(JSONHandler):
    """``GET /openapi.json``: the OpenAPI 3 document of every endpoint."""

    def get(self) -> None:
        self.write_json(openapi.document(self.ctx.config.max_timeout))

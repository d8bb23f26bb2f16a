"""The service routes: ``GET /healthz``, ``GET /metrics``, ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from taskrunner import __version__
from taskrunner.web import openapi
from taskrunner.web.base import JSONHandler


class HealthHandler(JSONHandler):
    """``GET /healthz``: is the instance up, and how busy. Public: probes need no token."""

    public_methods = ("GET",)

    def get(self) -> None:
        body: dict[str, Any] = {
            "status": "ok",
            "port": self.ctx.port,
            "instance": self.ctx.instance,
            "pid": self.ctx.pid,
            "running": self.ctx.engine.running,
            "version": __version__,
        }
        store = self.ctx.jobs.store
        if store is not None:
            # Still 200: /run is served; POST /jobs is refused while the store fails.
            body["job_store"] = {"ok": store.healthy, "write_failures": store.write_failures,
                                 "error": None if store.healthy else store.last_error}
            if not store.healthy:
                body["status"] = "degraded"
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
        self.write_json(openapi.document(self.ctx.config.max_timeout))

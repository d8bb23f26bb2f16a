"""`make_app`: the Tornado application of one instance, its routes and access log."""

from __future__ import annotations

import logging
from typing import Any

from tornado.web import Application, RequestHandler

from taskrunner.context import InstanceContext
from taskrunner.handlers import HealthHandler, NotFoundHandler, RunHandler
from taskrunner.job_handlers import JobHandler, JobOutputHandler, JobsHandler, OpenAPIHandler

access_log = logging.getLogger("taskrunner.access")


def _log_request(handler: RequestHandler) -> None:
    request = handler.request
    status = handler.get_status()
    program = getattr(handler, "program", None)
    exit_status = getattr(handler, "exit_status", None)
    level = logging.INFO if status < 500 else logging.ERROR
    access_log.log(
        level, "%s %s %s %.1fms client=%s program=%s exit=%s",
        request.method, request.uri, status, 1000.0 * request.request_time(),
        request.remote_ip, program or "-", "-" if exit_status is None else exit_status,
    )


def make_app(ctx: InstanceContext, **settings: Any) -> Application:
    """The application serving every route of one instance, bound to ``ctx``."""
    routes = [
        (r"/run", RunHandler, {"ctx": ctx}),
        (r"/healthz", HealthHandler, {"ctx": ctx}),
        (r"/jobs", JobsHandler, {"ctx": ctx}),
        (r"/jobs/([^/]+)", JobHandler, {"ctx": ctx}),
        (r"/jobs/([^/]+)/output", JobOutputHandler, {"ctx": ctx}),
        (r"/openapi.json", OpenAPIHandler, {"ctx": ctx}),
    ]
    return Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        log_function=_log_request,
        **settings,
    )

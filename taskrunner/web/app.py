"""`make_app`: the Tornado application of one instance, its routes and access log."""

from __future__ import annotations

from typing import Any

from tornado.web import Application, RequestHandler

from taskrunner.listener.streams import EarlyAnswerTransform
from taskrunner.web.access import RequestIdTransform, log_request
from taskrunner.web.actions import ActionJobsHandler, ActionRunHandler, ActionsHandler
from taskrunner.web.base import NotFoundHandler
from taskrunner.web.context import InstanceContext
from taskrunner.web.jobs import JobHandler, JobOutputHandler, JobsHandler
from taskrunner.web.page import PageHandler
from taskrunner.web.recycle import drain_transform
from taskrunner.web.run import RunHandler
from taskrunner.web.service import (
    HealthHandler,
    LiveHandler,
    MetricsHandler,
    OpenAPIHandler,
    ReadyHandler,
)


def make_app(ctx: InstanceContext, **settings: Any) -> Application:
    """The application serving every route of one instance, bound to ``ctx``."""
    routes = [
        (r"/run", RunHandler, {"ctx": ctx}),
        (r"/healthz", HealthHandler, {"ctx": ctx}),
        (r"/livez", LiveHandler, {"ctx": ctx}),
        (r"/readyz", ReadyHandler, {"ctx": ctx}),
        (r"/metrics", MetricsHandler, {"ctx": ctx}),
        (r"/jobs", JobsHandler, {"ctx": ctx}),
        (r"/jobs/([^/]+)", JobHandler, {"ctx": ctx}),
        (r"/jobs/([^/]+)/output", JobOutputHandler, {"ctx": ctx}),
        (r"/actions", ActionsHandler, {"ctx": ctx}),
        (r"/actions/([^/]+)", ActionRunHandler, {"ctx": ctx}),
        (r"/actions/([^/]+)/jobs", ActionJobsHandler, {"ctx": ctx}),
        (r"/openapi.json", OpenAPIHandler, {"ctx": ctx}),
        (r"/ui", PageHandler, {"ctx": ctx}),
        (r"/ui/([^/]+)", PageHandler, {"ctx": ctx}),
    ]

    def request_done(handler: RequestHandler) -> None:
        log_request(handler)
        for observer in ctx.observers:
            observer(handler)

    app = Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        log_function=request_done,
        **settings,
    )
    app.add_transform(RequestIdTransform)
    app.add_transform(drain_transform(ctx))
    app.add_transform(EarlyAnswerTransform)
    return app

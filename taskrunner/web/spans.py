"""OpenTelemetry spans of requests and commands, exported over OTLP/HTTP when asked.

Asked means: the ``otel`` extra installed (``opentelemetry-sdk`` and
``opentelemetry-exporter-otlp-proto-http``) and ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set (``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` turn it off). Otherwise `open_spans` returns None and
nothing of OpenTelemetry is imported: this module imports it inside `Spans` only.

Each request is a server span named ``METHOD /route``, with the id its ``traceparent``
response header names (web/trace.py), a child of the caller's span. A command adds three
children of it: ``queue`` (the wait for a slot), ``spawn`` (its confinement and the spawn)
and ``run`` (the span its ``TRACEPARENT`` names, so what the command traces nests under
it), with the command, its status and, where the result has them, its usage as
attributes. The spans are made whole, with the ids and times taskrunner chose, and handed
to the SDK's batch processor, which exports them from its own thread: the event loop never
waits for the collector. A trace whose caller did not sample it (flags 00) exports nothing.
The exporter and the processor read the rest of the standard ``OTEL_*`` variables
(headers, timeout, compression, ``OTEL_BSP_*``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from taskrunner import __version__
from taskrunner.process.engine import Command, CommandResult
from taskrunner.process.environment import CommandTrace
from taskrunner.process.phases import Phases
from taskrunner.web.trace import RequestTrace, new_span_id

if TYPE_CHECKING:
    from tornado.web import RequestHandler

log = logging.getLogger("taskrunner.http")

ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for spans: an OTLP endpoint, and the SDK not disabled."""
    return (any(environ.get(name) for name in ENDPOINTS)
            and environ.get("OTEL_SDK_DISABLED", "").strip().lower() != "true"
            and environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "none")


def open_spans(instance: str, environ: Mapping[str, str]) -> Spans | None:
    """The instance's span exporter if the environment asks for one and the ``otel`` extra
    is installed; else None (a warning when asked for but not installed)."""
    if not wanted(environ):
        return None
    try:
        return Spans(instance, environ)
    except ImportError as exc:
        log.warning("OTEL_EXPORTER_OTLP_*ENDPOINT is set but OpenTelemetry is not installed "
                    "(%s): no spans are exported; install taskrunner[otel]", exc.name)
        return None


def _route(path: str) -> str:
    # A low-cardinality span name: a job's id is a variable of its route.
    parts = path.split("/")
    if len(parts) >= 3 and parts[1] == "jobs" and parts[2]:
        return "/jobs/{id}" + ("/" + "/".join(parts[3:]) if len(parts) > 3 else "")
    if len(parts) >= 3 and parts[1] == "ui":
        return "/ui/{file}"
    return path


class Spans:
    """Makes and exports the spans (`open_spans` builds it). A request observer
    (``InstanceContext.observers``) and the launcher's `CommandTracer`."""

    def __init__(self, instance: str, environ: Mapping[str, str]) -> None:
        from opentelemetry import trace as api
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self._api = api
        self._span = ReadableSpan
        attributes: dict[str, str] = {"service.instance.id": instance,
                                      "service.version": __version__}
        if not environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = "taskrunner"
        self._resource = Resource.create(attributes)
        self._scope = InstrumentationScope("taskrunner", __version__)
        self._processor = BatchSpanProcessor(OTLPSpanExporter())

    def close(self) -> None:
        """Export what is still queued (within the exporter's timeout), then stop."""
        self._processor.shutdown()  # type: ignore[no-untyped-call]

    # -- spans -----------------------------------------------------------------------

    def _context(self, trace_id: str, span_id: str, flags: str, remote: bool = False) -> Any:
        api = self._api
        return api.SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=remote,
                               trace_flags=api.TraceFlags(int(flags, 16)))

    def _emit(self, name: str, trace_id: str, span_id: str, parent_id: str | None,
              flags: str, start: float, end: float, attributes: dict[str, Any],
              kind: Any = None, error: str | None = None, parent_remote: bool = False) -> None:
        if not int(flags, 16) & 1:
            return  # the caller does not record this trace
        api = self._api
        status = (api.Status(api.StatusCode.ERROR, error) if error is not None
                  else api.Status(api.StatusCode.UNSET))
        span = self._span(
            name, context=self._context(trace_id, span_id, flags),
            parent=(None if parent_id is None
                    else self._context(trace_id, parent_id, flags, parent_remote)),
            resource=self._resource, attributes=attributes,
            kind=api.SpanKind.INTERNAL if kind is None else kind, status=status,
            start_time=int(start * 1e9), end_time=int(max(start, end) * 1e9),
            instrumentation_scope=self._scope)
        self._processor.on_end(span)

    def request_done(self, handler: RequestHandler) -> None:
        """The span of a finished request (an observer of ``InstanceContext``)."""
        trace: RequestTrace | None = getattr(handler, "_trace_context", None)
        if trace is None or not trace.sampled:
            return  # nothing of an unsampled trace is exported
        request = handler.request
        status = handler.get_status()
        end = time.time()
        route = _route(request.path)
        attributes: dict[str, Any] = {
            "http.request.method": str(request.method), "http.route": route,
            "url.path": request.path, "http.response.status_code": status,
            "client.address": str(request.remote_ip),
            "taskrunner.request_id": request.headers.get("X-Request-Id", ""),
        }
        caller = getattr(getattr(handler, "caller", None), "name", None)
        if caller is not None:
            attributes["taskrunner.caller"] = caller
        self._emit(f"{request.method} {route}", trace.trace_id, trace.span_id,
                   trace.parent_id, trace.flags, end - request.request_time(), end,
                   attributes, kind=self._api.SpanKind.SERVER,
                   error=str(status) if status >= 500 else None, parent_remote=True)

    def command_started(self, command: Command, phases: Phases) -> None:
        """Spans for the wait and the spawn now, and for the run once it ends."""
        trace = command.spec.trace
        assert trace is not None and phases.spawning is not None
        spawned = phases.spawned
        assert spawned is not None  # set by the launcher before it tells the tracer
        program = {"process.command": command.program}
        self._emit("queue", trace.trace_id, new_span_id(), trace.parent_id, trace.flags,
                   phases.reserved, phases.spawning, {})
        self._emit("spawn", trace.trace_id, new_span_id(), trace.parent_id, trace.flags,
                   phases.spawning, spawned, {**program, "process.pid": command.pid})
        command.on_finish(lambda result: self._ran(trace, command, spawned, result))

    def _ran(self, trace: CommandTrace, command: Command, began: float,
             result: CommandResult) -> None:
        attributes: dict[str, Any] = {
            "process.command": command.program,
            "process.command_args": [str(arg) for arg in command.spec.args],
            "process.pid": command.pid, "process.exit.code": result.status,
            "taskrunner.timed_out": result.timed_out, "taskrunner.cancelled": result.cancelled,
            "taskrunner.oom_killed": result.oom_killed,
        }
        attributes.update(_usage(getattr(result, "usage", None)))
        error = ("timed out" if result.timed_out else "out of memory" if result.oom_killed
                 else None)
        self._emit("run", trace.trace_id, trace.span_id, trace.parent_id, trace.flags, began,
                   began + result.duration, attributes, error=error)


def _usage(usage: object) -> dict[str, Any]:
    # What the command cost, when the result carries it (a mapping or a dataclass of
    # figures): each number an attribute of its own.
    if dataclasses.is_dataclass(usage) and not isinstance(usage, type):
        usage = dataclasses.asdict(usage)
    if not isinstance(usage, Mapping):
        return {}
    return {f"taskrunner.usage.{key}": value for key, value in usage.items()
            if isinstance(value, int | float) and not isinstance(value, bool)}

"""The base of every handler: the JSON error shape, the token check, request bodies.

`JSONHandler.write_error` is the one place that turns any error into
``{"error": code, "message": text}`` with the right status; nothing else writes errors.

An answered error leaves the connection usable where it can. Tornado closes a connection
whose answer went out before the request body was read; nginx counts that as a failure of
the instance and stops sending it requests (``max_fails``), so a stranger's wrong token
could take the stack's instances out. Hence the browser's rules (web/edge.py), then the
token, are checked first on every route and method, but a body handler reads (and drops) a
refused body before it answers 421, 403, 415 or 401, within a small budget (`DRAIN_BYTES`,
`DRAIN_TIME`), so that strangers cannot hold connections with slow refused bodies: past it
the refusal is answered at once. An answer that goes out before the body is read says
``Connection: close``, and the connection closes in a
lingering close (`taskrunner.listener.streams`), so the client reads the answer.

Every handler reads its request body itself, streamed: Tornado never buffers a body whole
(its own limit is out of reach, see `BodyHandler`). A route that takes no body reads and
drops at most `DRAIN_BYTES` of one, for at most `DRAIN_TIME`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import orjson
from tornado.ioloop import IOLoop
from tornado.web import HTTPError, RequestHandler, stream_request_body

from taskrunner.errors import (
    EDGE_REFUSALS,
    BodyTimeout,
    EdgeRefusal,
    MethodNotAllowed,
    MissingScope,
    NotFound,
    OutOfResources,
    PayloadTooLarge,
    ServiceUnavailable,
    TaskRunnerError,
    Unauthorized,
)
from taskrunner.listener.streams import body_arriving
from taskrunner.process.engine import CommandSpec
from taskrunner.process.launcher import Policy
from taskrunner.web.callers import Caller
from taskrunner.web.context import InstanceContext
from taskrunner.web.trace import TRACEPARENT, RequestTrace, request_trace
from taskrunner.web.validation import parse_job_request, parse_run_request

if TYPE_CHECKING:
    from taskrunner.jobs.job import Job

log = logging.getLogger("taskrunner.http")

_TORNADO_CODES = {400: "bad_request", 404: "not_found",
                  413: "body_too_large"}

DRAIN_BYTES = 64 * 1024
"""Bytes of a body the instance will not use (a refused request's, or one sent to a route
that takes none) read and dropped before the answer; past them it is answered at once."""

DRAIN_TIME = 1.0
"""Seconds such a body may take (at most ``--body-timeout``), likewise."""


@stream_request_body
class JSONHandler(RequestHandler):
    """Base of every handler: JSON bodies, JSON errors, request accounting."""

    ctx: InstanceContext
    public_methods: tuple[str, ...] = ()
    """Methods served without the bearer token (the probes' ``GET``, the page's)."""
    scope: str | tuple[str, ...] | None = None
    """The scope (``run``, ``jobs``, ``admin``, ``actions``) a caller needs here, or a
    tuple of which any one will do; None: any caller."""
    caller: Caller | None = None
    """Who is calling, once the token is checked (None on a public route)."""
    keeps_body = False
    """True where the route uses the request body (`BodyHandler`); elsewhere it is dropped."""
    refusal: EdgeRefusal | Unauthorized | MissingScope | None = None
    """Why the caller may not make this request; answered once the body is in."""
    _body_timer: object | None = None
    _trace_context: RequestTrace | None = None

    # Not named "trace": Tornado looks a request's handler method up by the method's name,
    # and answer_in_place sets one for a method it does not know (TRACE included).
    @property
    def trace_context(self) -> RequestTrace:
        """The request's trace context (web/trace.py): the caller's ``traceparent``, else a
        fresh trace; made once, on first use."""
        if self._trace_context is None:
            self._trace_context = request_trace(self.request.headers)
        return self._trace_context

    def initialize(self, ctx: InstanceContext) -> None:
        self.ctx = ctx
        self.program: str | None = None
        self.exit_status: int | None = None
        self._counted = False
        self.closing = False
        """The answer goes out before the request body was read: say ``Connection: close``."""
        self.body = bytearray()
        self.received = 0
        self._body_seconds = DRAIN_TIME
        if not self.keeps_body and body_arriving(self.request):
            self._time_body(min(DRAIN_TIME, ctx.config.body_timeout))
        if self.request.method not in self.SUPPORTED_METHODS:
            # Tornado answers a method it does not know with 405 before prepare(), that is
            # before the token is checked (and with the body unread): take the method in
            # and answer 405 where its handler method would run.
            self.SUPPORTED_METHODS = (*self.SUPPORTED_METHODS, str(self.request.method))
            self.answer_in_place(HTTPError(405))

    def prepare(self) -> None:
        self.ctx.request_started()
        self._counted = True
        self.check_edge()
        if self.request.method in self.public_methods:
            return
        # The callers as they are now: a reload (SIGHUP) swaps the whole set, and this
        # request keeps the caller it was given.
        self.caller = self.ctx.callers.identify(self.request.headers.get("Authorization"))
        self.caller.require(self.scope)

    def check_edge(self) -> None:
        """Refuse what a web page could have sent against the caller's will (a foreign
        ``Host``, a foreign ``Origin``, a body a page sends without asking: web/edge.py),
        on every route, before the token is checked and before anything can run."""
        self.ctx.edge.check(str(self.request.method), self.request.headers)

    def answer_in_place(self, error: Exception) -> None:
        """Answer ``error`` where this request's handler method would run: after prepare()
        and, in a body handler, once the whole body is read, so the connection stays open."""
        def answer(*args: str, **kwargs: str) -> None:
            raise error

        # Tornado looks the handler method up on the handler object, by the request's
        # method name: this one takes its place for this request only.
        setattr(self, str(self.request.method).lower(), answer)

    def on_finish(self) -> None:
        self.body_complete()
        self._uncount()

    def on_connection_close(self) -> None:
        self.body_complete()
        super().on_connection_close()
        self._uncount()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.ctx.request_finished()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        # On every answer, errors included: which trace (and span) the request was.
        self.set_header(TRACEPARENT, self.trace_context.header())

    def write_json(self, body: Any, status: int = 200) -> None:
        """Finish the response with ``body`` as JSON."""
        self.set_status(status)
        # orjson: several times faster than json.dumps + encode on large results (bench.md).
        self.finish(orjson.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs["exc_info"][1] if "exc_info" in kwargs else None
        if isinstance(exc, TaskRunnerError):
            code, message = exc.code, exc.message
            self.set_status(exc.status)
            if exc.retry_after is not None:
                self.set_header("Retry-After", str(exc.retry_after))
            if isinstance(exc, Unauthorized):
                self.set_header("WWW-Authenticate", "Bearer")
        elif status_code == 405:
            allowed = self.allowed_methods()
            self.set_header("Allow", ", ".join(allowed))
            code = MethodNotAllowed.code
            message = (f"{self.request.method} is not allowed on {self.request.path}; "
                       f"allowed: {', '.join(allowed)}")
        elif isinstance(exc, HTTPError) and status_code < 500:
            code = _TORNADO_CODES.get(status_code, "bad_request")
            message = exc.log_message or self._reason
            if exc.args and "%" in message:
                message = message % exc.args
        else:
            code, message = "internal", "internal error; the instance log has the details"
        if self.closing:
            self.set_header("Connection", "close")
        self.clear_header("Content-Length")
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"error": code, "message": message}))

    def send_task_error(self, error: TaskRunnerError) -> None:
        """Answer with ``error`` now (for errors raised outside the handler method)."""
        self.send_error(error.status, exc_info=(type(error), error, None))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, OutOfResources):
            log.warning("%s", value.message)  # the operator's problem: say it, once
            return
        if isinstance(value, TaskRunnerError) and value.status != TaskRunnerError.status:
            return  # an expected error, already answered; the access log has the line
        super().log_exception(typ, value, tb)

    def allowed_methods(self) -> list[str]:
        """The HTTP methods this handler implements."""
        return [m for m in ("GET", "POST", "DELETE")
                if getattr(type(self), m.lower()) is not getattr(RequestHandler, m.lower())]

    # -- the request body ----------------------------------------------------------------

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self.received += len(chunk)
        if self.received > self.body_limit():
            self.body = bytearray()
            self.closing = True
            self.send_task_error(self.over_limit())
        elif self.keeps_body and self.refusal is None:  # any other body is only counted
            self.body += chunk

    def body_limit(self) -> int:
        """The most body bytes read before answering: ``--max-body`` for a body this route
        uses, `DRAIN_BYTES` at most for one it drops."""
        max_body = self.ctx.config.max_body
        return max_body if self.keeps_body and self.refusal is None else min(max_body,
                                                                            DRAIN_BYTES)

    def over_limit(self) -> TaskRunnerError:
        """The answer to a body over `body_limit`."""
        if self.refusal is not None:
            return self.refusal
        if self.keeps_body:
            return PayloadTooLarge(
                f"request body is larger than the limit of {self.ctx.config.max_body} bytes")
        return PayloadTooLarge(f"{self.request.method} {self.request.path} takes no request "
                               f"body, and at most {self.body_limit()} bytes of one are read")

    def body_complete(self) -> None:
        """The whole body is in (the handler method runs): stop the body timer."""
        if self._body_timer is not None:
            IOLoop.current().remove_timeout(self._body_timer)
            self._body_timer = None

    def _time_body(self, seconds: float) -> None:
        # Our own timer rather than HTTPServer's body_timeout, which wraps every body read
        # in gen.with_timeout (a task and a chained future per request).
        self.body_complete()
        self._body_seconds = seconds
        self._body_timer = IOLoop.current().call_later(seconds, self._body_too_slow)

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if not self._finished and body_arriving(self.request):
            self.closing = True
            self.send_task_error(self.refusal or BodyTimeout(
                f"the request body did not arrive within {self._body_seconds:g} seconds"))


class NotFoundHandler(JSONHandler):
    """Every path no route matches."""

    def prepare(self) -> None:
        super().prepare()
        raise NotFound(f"no route for {self.request.path}")


def _length_above(declared: str, limit: int) -> bool:
    # Only ASCII digits are a length (str.isdigit() also takes "²", which int() refuses);
    # Tornado answers a malformed one. A length of more digits than fit in a file size is
    # too large without converting it (int() refuses more than 4,300 digits).
    if not (declared.isascii() and declared.isdigit()):
        return False
    return len(declared.lstrip("0")) > 18 or int(declared) > limit


class BodyHandler(JSONHandler):
    """A handler that uses its request body, so an oversized one gets a 413.

    Tornado's own ``max_body_size`` drops the connection instead; here the server's limit
    is set out of reach and ``--max-body`` is enforced on the declared length and on the
    bytes as they arrive. A refused request's body is only drained, within `DRAIN_BYTES`
    and `DRAIN_TIME`.
    """

    keeps_body = True

    def prepare(self) -> None:
        try:
            super().prepare()
        except (*EDGE_REFUSALS, Unauthorized, MissingScope) as refusal:
            self.refusal = refusal
            self.answer_in_place(refusal)
        declared = self.request.headers.get("Content-Length")
        if declared is not None and _length_above(declared, self.body_limit()):
            self.closing = True
            raise self.over_limit()
        timeout = self.ctx.config.body_timeout
        self._time_body(timeout if self.refusal is None else min(timeout, DRAIN_TIME))


class CommandHandler(BodyHandler):
    """Shared by the endpoints that start a command from a ``/run``-shaped body."""

    @property
    def policy(self) -> Policy | None:
        """The caller's own policy (allowlist, wrapper, share); None: the instance's."""
        return self.caller.policy if self.caller is not None else None

    def parse_command(self) -> CommandSpec:
        """Validate the body; refuse new commands while the instance shuts down."""
        self._may_start()
        config = self.ctx.config
        return self.prepared(parse_run_request(bytes(self.body),
                                               default_timeout=config.default_timeout,
                                               max_timeout=config.max_timeout))

    def parse_job(self) -> tuple[CommandSpec, str | None]:
        """Validate a ``POST /jobs`` body: the command, and its ``callback_url`` if any."""
        self._may_start()
        config = self.ctx.config
        spec, callback_url = parse_job_request(
            bytes(self.body), default_timeout=config.default_timeout,
            max_timeout=config.max_timeout, callback_hosts=self.ctx.jobs.callbacks.hosts)
        return self.prepared(spec), callback_url

    def prepared(self, spec: CommandSpec) -> CommandSpec:
        """``spec`` as this request runs it: in its trace, its program named in the log."""
        self.program = spec.args[0]
        return dataclasses.replace(spec, trace=self.trace_context.command())

    async def submit_job(self, spec: CommandSpec, policy: Policy | None,
                         callback_url: str | None, **recorded: Any) -> Job:
        """Accept ``spec`` as a job of the caller and answer 202 with it (``Location``:
        where to follow it); ``recorded`` goes into the job (an action and its params)."""
        registry = self.ctx.jobs
        caller = self.caller
        job = await registry.submit(spec, policy,
                                    caller=None if caller is None else caller.name,
                                    callback_url=callback_url,
                                    realm=None if caller is None else caller.realm, **recorded)
        self.set_header("Location", f"/jobs/{job.id}")
        self.write_json(await registry.describe(job), 202)
        return job

    def _may_start(self) -> None:
        self.body_complete()
        if self.refusal is not None:  # answer_in_place keeps us from here; never run one
            raise self.refusal
        if self.ctx.shutting_down:
            raise ServiceUnavailable()

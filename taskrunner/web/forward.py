"""Forwarding a request for a running job to its owner: any instance answers for any job.

Only a job's owner holds its live output and can cancel it. Behind a load balancer that
knows nothing of owners (a Kubernetes Service, a cloud balancer) the request may reach a
sibling; that sibling reads the owner's URL from the shared job index (its
``--advertise-url``, written when it claimed its name) and passes the request on, with the
caller's ``Authorization`` (the owner checks the caller again: a caller that does not own
the job gets the owner's 404) and the answer streamed back chunk by chunk as it comes, so
live output stays live.

Bounded: connecting (and the TLS handshake) and the start of the owner's answer each take
at most ``--forward-timeout``; a cancel's whole answer too. An output stream may last as
long as its job, so its body has no deadline: TCP keepalive notices an owner that vanished
from the network, and a caller who leaves closes the forward. A forward carries
`FORWARDED` (the forwarding instance's name); a request that carries it is never forwarded
again, so a stale URL that leads to another sibling (or back) cannot loop.

`OwnerUnreachable` (503) is answered only when the owner could not be asked: no process
holds its name, it advertised no URL, the request was forwarded already, or the owner did
not connect or start answering in time. Once the owner's answer has started, its status
and body are the answer; if the owner dies in the middle of a stream, the caller's
connection is closed without the stream's last chunk, so a client sees it cut short.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

from taskrunner.errors import OwnerUnreachable
from taskrunner.jobs.job import Job
from taskrunner.web.access import REQUEST_ID
from taskrunner.web.peers import peer_context

if TYPE_CHECKING:
    from taskrunner.web.base import JSONHandler

log = logging.getLogger("taskrunner.http")

FORWARDED = "Taskrunner-Forwarded"
"""The request header a forward carries: the name of the instance that forwarded it."""

_PASSED_ON = ("Authorization", "Accept", REQUEST_ID)
_PASSED_BACK = ("Content-Type", "Cache-Control", "X-Accel-Buffering", "Retry-After",
                "WWW-Authenticate", "Location")
_KEEPALIVE = (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))


class Forward:
    """One request passed on to a job's owner, its answer streamed back through
    ``handler``; `caller_left` ends it."""

    def __init__(self, handler: JSONHandler) -> None:
        self.handler = handler
        self.stream: IOStream | None = None
        self.started = False
        """The owner's answer has begun: its status and headers are the handler's."""
        self.complete = False
        self.left = False
        """The caller left: nothing more is passed on."""

    async def run(self, job: Job, what: str) -> None:
        """Pass the request on to the owner of ``job`` (``what``: for messages, e.g.
        ``cancel``); `OwnerUnreachable` if the owner cannot be asked."""
        handler = self.handler
        ctx = handler.ctx
        request = handler.request
        if FORWARDED in request.headers:
            raise _unreachable(job, what, f"this request was forwarded here already (by "
                               f"{request.headers[FORWARDED]!r}) and is not forwarded again")
        store = ctx.jobs.store
        url = None if store is None else await store.url_of(job.instance)
        if url is None:
            raise _unreachable(job, what, "no process holds its name, or it advertised no URL")
        parts = urlsplit(url)
        host, timeout = parts.hostname or "", ctx.config.forward_timeout
        tls = peer_context(ctx.config.peer_ca_file) if parts.scheme == "https" else None
        port = parts.port or (443 if tls else 80)
        try:
            self.stream = await TCPClient().connect(host, port, ssl_options=tls,
                                                    timeout=timeout)
        except (OSError, StreamClosedError, TimeoutError) as exc:
            raise _unreachable(job, what, f"{url} did not connect: {_why(exc)}") from None
        _keepalive(self.stream)
        if self.left or self.stream.closed():
            self.close()  # the caller left while it connected
            return
        cancel = request.method != "GET"
        connection = HTTP1Connection(self.stream, True, HTTP1ConnectionParameters(
            no_keep_alive=True, decompress=False, header_timeout=timeout,
            body_timeout=timeout if cancel else None, max_body_size=1 << 62))
        headers = httputil.HTTPHeaders({"Host": parts.netloc, "Connection": "close",
                                        FORWARDED: ctx.instance,
                                        "X-Real-IP": str(request.remote_ip)})
        for name in _PASSED_ON:
            if name in request.headers:
                headers[name] = request.headers[name]
        target = request.uri or request.path
        try:
            connection.write_headers(
                httputil.RequestStartLine(str(request.method), target, "HTTP/1.1"), headers)
            connection.finish()
            await connection.read_response(_Relay(self))
        except (OSError, StreamClosedError, httputil.HTTPInputError) as exc:
            if not self.started:
                raise _unreachable(job, what, f"{url}: {_why(exc)}") from None
        finally:
            self.close()
        if not self.started:
            raise _unreachable(job, what, f"{url} did not answer within {timeout:g}s")
        log.debug("job %s: %s forwarded to %s (%s)", job.id, what, job.instance, url)
        connection_in = handler.request.connection
        if not self.complete and isinstance(connection_in, HTTP1Connection):
            # The owner's answer was cut short: so is the caller's, visibly.
            connection_in.close()

    def caller_left(self) -> None:
        """The caller's connection closed: end the forward, whatever stage it is at."""
        self.left = True
        self.close()

    def close(self) -> None:
        """Close the connection to the owner."""
        if self.stream is not None and not self.stream.closed():
            self.stream.close()


class _Relay(httputil.HTTPMessageDelegate):
    # The owner's answer, passed to the caller as it comes. Raises nothing: Tornado would
    # log an exception of a delegate as an application error.

    def __init__(self, forward: Forward) -> None:
        self.forward = forward

    def headers_received(self, start_line: httputil.RequestStartLine |
                         httputil.ResponseStartLine, headers: httputil.HTTPHeaders) -> None:
        assert isinstance(start_line, httputil.ResponseStartLine)
        handler = self.forward.handler
        handler.set_status(start_line.code, start_line.reason)
        for name in _PASSED_BACK:
            if name in headers:
                handler.set_header(name, headers[name])
        self.forward.started = True

    async def data_received(self, chunk: bytes) -> None:
        handler = self.forward.handler
        if handler.request.connection is None:
            self.forward.close()
            return
        handler.write(chunk)
        try:
            await handler.flush()  # at once: live output stays live
        except StreamClosedError:
            self.forward.close()

    def finish(self) -> None:
        self.forward.complete = True

    def on_connection_close(self) -> None:
        pass  # Forward.run sees that the answer did not complete


def _keepalive(stream: IOStream) -> None:
    # An owner that vanishes from the network (no reset, no FIN) while a stream is quiet
    # is noticed in about 25 s rather than never.
    sock = stream.socket
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in _KEEPALIVE:
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _unreachable(job: Job, what: str, why: str) -> OwnerUnreachable:
    return OwnerUnreachable(
        f"job {job.id} is {job.state} on instance {job.instance!r}, which alone can {what} "
        f"it, and it could not be asked: {why}; its state is readable here (GET /jobs/<id>)")


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, StreamClosedError) and exc.real_error is not None:
        exc = exc.real_error
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__

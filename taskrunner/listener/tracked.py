"""One request as the connection cap sees it pass: when its headers are in, when its body
is, and the 431 answered in the application's stead.

`CappedHTTPServer` wraps Tornado's delegate for each request in a `TrackedRequest`, which
tells the server through two callbacks, so this module needs nothing of the server's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPMessageDelegate,
    RequestStartLine,
    ResponseStartLine,
)

from taskrunner.listener.streams import headers_too_large

HeadersIn = Callable[[HTTPHeaders], "str | None"]
"""Records a request's headers; returns why to refuse it with a 431, or None."""


class TrackedRequest(HTTPMessageDelegate):
    """Passes a request through, calling ``headers_in`` when its headers are in and
    ``body_in`` when its body is; answers 431 itself to headers ``headers_in`` refuses."""

    def __init__(self, request_conn: HTTPConnection, delegate: HTTPMessageDelegate,
                 headers_in: HeadersIn, body_in: Callable[[], None]) -> None:
        self.request_conn = request_conn
        self.delegate = delegate
        self.headers_in = headers_in
        self.body_in = body_in
        self.refused = False

    def headers_received(self, start_line: RequestStartLine | ResponseStartLine,
                         headers: HTTPHeaders) -> Awaitable[None] | None:
        why = self.headers_in(headers)
        if why is not None:
            self.refused = True
            self.request_conn.write_headers(*headers_too_large(why))
            self.request_conn.finish()  # before the body: the connection closes after it
            return None
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return None if self.refused else self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.body_in()
        if not self.refused:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        if not self.refused:
            self.delegate.on_connection_close()

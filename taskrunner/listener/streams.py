"""The stream of one client connection: what the connection layer knows of it, and how it
closes.

`CappedHTTPServer` serves every connection on a `ClientStream` (`ClientSSLStream` over
HTTPS): Tornado's stream, plus what `taskrunner.listener.connections` records as requests
come — whether the connection awaits a request's headers, whether a request's body is
still arriving, whether its last request carried a valid token — and one change to
closing.

Tornado closes a connection silently when the request line and headers are over its limit,
and at once after an answer that went out before the request's body was read. Either way
the client may still be sending, and the close resets the connection before the client has
read anything. `ClientStream.close_fd` (the method Tornado's ``BaseIOStream`` leaves to
subclasses) hands the socket to a lingering close instead (`taskrunner.listener.linger`):
with a JSON 431 `headers_too_large` first when the headers were too large, so the client
learns why. A connection the server closes to make room (``evicted``) is closed at once.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import orjson
from tornado.httputil import HTTPHeaders, HTTPServerRequest, ResponseStartLine
from tornado.iostream import IOStream, SSLIOStream, UnsatisfiableReadError
from tornado.web import OutputTransform

from taskrunner.errors import HeadersTooLarge

MAX_HEADER_BYTES = 64 * 1024
"""Largest request line and headers together, in bytes (Tornado's default, made ours)."""

MAX_HEADER_FIELDS = 100
"""Most header fields in one request (Apache's ``LimitRequestFields``)."""

Handover = Callable[[socket.socket, bytes], None]
"""Takes over a socket for a lingering close, sending the bytes given first."""


def headers_too_large(why: str) -> tuple[ResponseStartLine, HTTPHeaders, bytes]:
    """The 431 answer, ``why`` saying which limit was passed."""
    body = orjson.dumps({"error": HeadersTooLarge.code, "message": why}) + b"\n"
    headers = HTTPHeaders({"Content-Type": "application/json",
                           "Content-Length": str(len(body)), "Connection": "close"})
    return ResponseStartLine("HTTP/1.1", HeadersTooLarge.status,
                             "Request Header Fields Too Large"), headers, body


def _raw(answer: tuple[ResponseStartLine, HTTPHeaders, bytes]) -> bytes:
    start, headers, body = answer
    lines = [f"{start.version} {start.code} {start.reason}"]
    lines += [f"{name}: {value}" for name, value in headers.get_all()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


OVERSIZED_HEADERS = _raw(headers_too_large(
    f"the request line and headers are larger than the limit of {MAX_HEADER_BYTES} bytes"))


class ClientStream(IOStream):
    """A client connection's stream; ``hand_over`` (set by the server) takes its socket
    for a lingering close when the client may still be sending."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.awaiting_headers = True
        """No request in progress: the next one's headers have not all arrived."""
        self.body_pending = False
        """A request's headers are in, and its body has not all arrived."""
        self.trusted = False
        """Its last request carried a valid token (or the instance needs none)."""
        self.evicted = False
        """The server closes it to make room for another: no lingering."""
        self.hand_over: Handover | None = None

    def last_words(self) -> bytes | None:
        """What to send before a lingering close (b"": nothing more); None: close at once."""
        if self.evicted or self.hand_over is None:
            return None
        if self.awaiting_headers and isinstance(self.error, UnsatisfiableReadError):
            return OVERSIZED_HEADERS  # the only read with a size limit is the headers'
        if self.body_pending:
            return b""
        return None

    def close_fd(self) -> None:
        words = self.last_words()
        if words is None or self.hand_over is None:
            super().close_fd()
            return
        hand_over, sock = self.hand_over, self.socket
        self.hand_over = None
        self.socket = None  # type: ignore[assignment]  # as IOStream.close_fd leaves it
        hand_over(sock, words)


class ClientSSLStream(ClientStream, SSLIOStream):
    """A `ClientStream` over TLS."""


def body_arriving(request: HTTPServerRequest) -> bool:
    """True while ``request``'s body is still arriving: an answer now comes before it was
    read. False on a connection the connection layer does not track."""
    stream = getattr(request.connection, "stream", None)
    return isinstance(stream, ClientStream) and stream.body_pending


class EarlyAnswerTransform(OutputTransform):
    """Says ``Connection: close`` on an answer that goes out while its request's body is
    still arriving: the connection closes after it (nothing more of it is read), so the
    client, or nginx, must not send another request on it."""

    def __init__(self, request: HTTPServerRequest) -> None:
        self.request = request

    def transform_first_chunk(self, status_code: int, headers: HTTPHeaders, chunk: bytes,
                              finishing: bool) -> tuple[int, HTTPHeaders, bytes]:
        if body_arriving(self.request):
            headers["Connection"] = "close"
        return status_code, headers, chunk

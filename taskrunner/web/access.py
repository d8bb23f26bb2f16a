"""Request ids, the client's address behind a proxy, and the access log.

Every request gets an id: the ``X-Request-Id`` the front proxy sent (nginx makes one up when
the client sent none), or one made here. It is echoed in the response and written on the
request's access-log line, so one id finds a request in nginx's log and in the instance's.

One access-log line per request, on the ``taskrunner.access`` logger::

    POST /run 200 12.3ms rid=5f0c... client=10.0.0.7 caller=ci program=make exit=0 cmd=11.9ms
        trace=4bf9...                                        (on the same line)

``caller`` is the caller the token named (``token`` for the one ``--token-file`` token,
``anonymous`` without any; ``-`` before the token is checked or when it is refused).
``trace`` is the request's W3C trace id (web/trace.py): the caller's, or a fresh one, as
its ``traceparent`` response header says. With ``--log-format json`` the line's fields
(``request_id``, ``client``, ``caller``, ``method``, ``path``, ``status``, ``duration_ms``,
``program``, ``exit_status``, ``command_ms``, ``trace_id``) are keys of their own. In the
text line a program name with a space, a quote or a backslash is quoted, with ``\\`` and
``\"`` inside (``program="my prog"``), so it cannot pass for more fields.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.web import OutputTransform, RequestHandler

access_log = logging.getLogger("taskrunner.access")

REQUEST_ID = "X-Request-Id"

# An id a caller or proxy sent is kept if it is short printable ASCII without spaces, so a
# text log line stays one line with space-separated fields.
_GOOD_ID = re.compile(r"[\x21-\x7e]{1,128}")
_IP_ADDRESS = re.compile(r"[0-9A-Fa-f:.]{2,45}")  # cheap pre-check before ipaddress


def request_id(request: HTTPServerRequest) -> str:
    """The request's id: the one it came with if acceptable, else a new one (kept on it)."""
    given = request.headers.get(REQUEST_ID, "")
    if _GOOD_ID.fullmatch(given):
        return given
    new = secrets.token_hex(16)  # the shape of nginx's $request_id
    request.headers[REQUEST_ID] = new
    return new


def apply_proxy_address(request: HTTPServerRequest) -> None:
    """Take the client's address from ``X-Real-IP``, else the last ``X-Forwarded-For`` hop.

    What Tornado's ``xheaders`` does for the address, without its per-request
    ``getaddrinfo`` (it validates even the peer's own address that way), a tenth of a small
    request's CPU (docs/bench.md). A value that is not an address is ignored, so the log
    never carries junk a client put there.
    """
    headers = request.headers
    address = headers.get("X-Real-Ip")
    if address is None:
        forwarded = headers.get("X-Forwarded-For")
        if forwarded is None:
            return
        address = forwarded.rpartition(",")[2]
    address = address.strip()
    if _IP_ADDRESS.fullmatch(address):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return
        request.remote_ip = address


class RequestIdTransform(OutputTransform):
    """Gives each request its id (echoed in ``X-Request-Id``) and its proxied address."""

    def __init__(self, request: HTTPServerRequest) -> None:
        self.request_id = request_id(request)
        apply_proxy_address(request)

    def transform_first_chunk(
        self, status_code: int, headers: Any, chunk: bytes, finishing: bool
    ) -> tuple[int, Any, bytes]:
        headers[REQUEST_ID] = self.request_id
        return status_code, headers, chunk


def _command_ms(handler: RequestHandler) -> float | None:
    command = getattr(handler, "command", None)
    result = getattr(command, "result", None)
    if result is None or not result.done() or result.cancelled() or result.exception():
        return None
    duration: float = result.result().duration
    return round(1000.0 * duration, 1)


def _text_value(value: str | None) -> str:
    # The text line is space-separated key=value: quoted, "x exit=0" cannot pass for two
    # fields; backslashes doubled inside, so an escaped control character (escape(), on the
    # whole line) is told from a backslash that was sent.
    if not value:
        return "-"
    if " " in value or '"' in value or "\\" in value:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def log_request(handler: RequestHandler) -> None:
    """Write the access-log line of one finished request."""
    request = handler.request
    status = handler.get_status()
    program = getattr(handler, "program", None)
    exit_status = getattr(handler, "exit_status", None)
    command_ms = _command_ms(handler)
    caller = getattr(getattr(handler, "caller", None), "name", None)
    duration_ms = round(1000.0 * request.request_time(), 1)
    trace = getattr(handler, "_trace_context", None)
    trace_id = getattr(trace, "trace_id", None)
    fields = {
        "request_id": request.headers.get(REQUEST_ID, "-"),
        "client": request.remote_ip,
        "caller": caller,
        "method": request.method,
        "path": request.uri,
        "status": status,
        "duration_ms": duration_ms,
        "program": program,
        "exit_status": exit_status,
        "command_ms": command_ms,
        "trace_id": trace_id,
    }
    level = logging.INFO if status < 500 else logging.ERROR
    access_log.log(
        level, "%s %s %s %.1fms rid=%s client=%s caller=%s program=%s exit=%s cmd=%s trace=%s",
        request.method, request.uri, status, duration_ms, fields["request_id"],
        request.remote_ip, caller or "-", _text_value(program),
        "-" if exit_status is None else exit_status,
        "-" if command_ms is None else f"{command_ms}ms", trace_id or "-", extra=fields,
    )


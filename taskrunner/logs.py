"""Logging: the process-wide setup (``--log-format text|json``), request ids, the access log.

`setup_logging` is called once by the CLI; tests call it and remove the handler it returns.
Every request gets an id: the ``X-Request-Id`` the front proxy sent (nginx makes one up when
the client sent none), or one made here. It is echoed in the response and written on the
request's access-log line, so one id finds a request in nginx's log and in the instance's.

One access-log line per request, on the ``taskrunner.access`` logger::

    POST /run 200 12.3ms rid=5f0c... client=10.0.0.7 program=make exit=0 cmd=11.9ms

With ``--log-format json`` each record is one JSON object, and the access line's fields
(``request_id``, ``client``, ``method``, ``path``, ``status``, ``duration_ms``, ``program``,
``exit_status``, ``command_ms``) are keys of their own.

A record is one line whatever a caller sent: in both formats every logged string has its
control characters (C0, DEL, C1, U+2028/U+2029) escaped (`escape`), so a newline in
``args[0]`` cannot forge a line and an escape sequence cannot reach a terminal. A traceback
keeps its lines, each indented, so none can pass for a record of its own. In the text
access line a program name with a space, a quote or a backslash is quoted, with ``\\`` and
``\"`` inside (``program="my prog"``), so it cannot pass for more fields.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import secrets
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from tornado.httputil import HTTPServerRequest
from tornado.web import OutputTransform, RequestHandler

access_log = logging.getLogger("taskrunner.access")

REQUEST_ID = "X-Request-Id"

# An id a caller or proxy sent is kept if it is short printable ASCII without spaces, so a
# text log line stays one line with space-separated fields.
_GOOD_ID = re.compile(r"[\x21-\x7e]{1,128}")
_IP_ADDRESS = re.compile(r"[0-9A-Fa-f:.]{2,45}")  # cheap pre-check before ipaddress

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_UNSAFE_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape(text: str) -> str:
    """``text`` with its control characters escaped as in a Python literal (``\\n``,
    ``\\x1b``, ``\\u2028``): one line, and nothing a terminal would act on."""
    if text.isprintable():
        return text  # the common case: one scan in C
    return _UNSAFE.sub(_escaped, text)


def _escape_block(text: str) -> str:
    # A traceback: its own newlines kept and every line after the first indented, so that
    # only a record starts a line at column 0; any other control character escaped.
    return "\n    ".join(_UNSAFE_BUT_NEWLINE.sub(_escaped, text).split("\n"))


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, with the message escaped and tracebacks indented (see above)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for block in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if block:
                line += "\n    " + _escape_block(block)
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": escape(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS:
                line[key] = _json_field(value)
        if record.exc_info:
            line["exc"] = _UNSAFE_BUT_NEWLINE.sub(_escaped, self.formatException(record.exc_info))
        return json.dumps(line, default=str)


def _json_field(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_json_field(item) for item in value]
    if isinstance(value, dict):
        return {escape(str(key)): _json_field(item) for key, item in value.items()}
    return escape(value if isinstance(value, str) else str(value))


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes lines in batches: at most ``interval`` seconds late.

    One access line per request would otherwise cost a write system call per request,
    and wake whoever reads the stream (supervisord) as often. A record at WARNING or above,
    a record logged outside the event loop's thread, and a full batch are written at once.
    What is still buffered when the process is SIGKILLed is lost (at most ``interval``).
    """

    def __init__(self, stream: TextIO, interval: float = 0.1, max_lines: int = 512) -> None:
        super().__init__(stream)
        self.interval = interval
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # logging's contract: report a formatting error, never raise
            self.handleError(record)
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line)
            urgent = (record.levelno >= logging.WARNING or loop is None
                      or len(self._lines) >= self.max_lines)
            if not urgent and self._timer is None and loop is not None:
                self._timer = loop.call_later(self.interval, self.flush)
        if urgent:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._lines:
                text = "\n".join(self._lines) + "\n"
                self._lines.clear()
                self.stream.write(text)
            self.stream.flush()


def setup_logging(log_format: str = "text", stream: TextIO | None = None,
                  level: int = logging.INFO) -> logging.Handler:
    """Send all log records to ``stream`` (default stderr) in ``log_format``; return the handler.

    Also turns off what no taskrunner log line shows but every record would compute (the
    logging HOWTO's "Optimization"): the caller's source file and line (a stack walk per
    record), thread, process and multiprocessing names. The access log writes a record per
    request, so that is per-request work saved.
    """
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchedStreamHandler(sys.stderr if stream is None else stream)
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler


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
    ``getaddrinfo`` (it validates even the peer's own address that way): measured at ~50 µs
    of CPU per request on W1, 10 % of a request's. A value that is not an address is
    ignored, so the log never carries junk a client put there.
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
    duration_ms = round(1000.0 * request.request_time(), 1)
    fields = {
        "request_id": request.headers.get(REQUEST_ID, "-"),
        "client": request.remote_ip,
        "method": request.method,
        "path": request.uri,
        "status": status,
        "duration_ms": duration_ms,
        "program": program,
        "exit_status": exit_status,
        "command_ms": command_ms,
    }
    level = logging.INFO if status < 500 else logging.ERROR
    access_log.log(
        level, "%s %s %s %.1fms rid=%s client=%s program=%s exit=%s cmd=%s",
        request.method, request.uri, status, duration_ms, fields["request_id"],
        request.remote_ip, _text_value(program), "-" if exit_status is None else exit_status,
        "-" if command_ms is None else f"{command_ms}ms", extra=fields,
    )


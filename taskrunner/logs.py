"""Logging: the process-wide setup (``--log-format text|json``) and its formats.

`setup_logging` is called once by the CLI; tests call it and remove the handler it returns.
With ``--log-format json`` each record is one JSON object, and the ``extra`` fields of a
record (the access line's, see `taskrunner.web.access`) are keys of their own.

A record is one line whatever a caller sent: in both formats every logged string has its
control characters (C0, DEL, C1, U+2028/U+2029) escaped (`escape`), so a newline in
``args[0]`` cannot forge a line and an escape sequence cannot reach a terminal. A traceback
keeps its lines, each indented, so none can pass for a record of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

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

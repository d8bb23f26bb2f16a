"""CPU per access-log record: taskrunner's text and JSON formatters on one POST /run line.

The record ``web/access.py`` logs for a ``POST /run`` (its message and its ``extra``
fields), formatted by `TextFormatter` and by `JSONFormatter`; the best of ``--repeat``
timings, each of as many calls as fill 0.2 s.
"""

from __future__ import annotations

import argparse
import functools
import logging

from bench.timing import best
from taskrunner.logs import JSONFormatter, TextFormatter


def access_record() -> logging.LogRecord:
    """An access-log record as `taskrunner.web.access.log_request` makes one."""
    fields = {"request_id": "0f3c9a2e", "client": "127.0.0.1", "caller": None,
              "method": "POST", "path": "/run", "status": 200, "duration_ms": 3.1,
              "program": "true", "exit_status": 0, "command_ms": 1.2}
    return logging.getLogger("taskrunner.access").makeRecord(
        "taskrunner.access", logging.INFO, __file__, 0,
        "%s %s %s %.1fms rid=%s client=%s caller=%s program=%s exit=%s cmd=%s",
        ("POST", "/run", 200, 3.1, "0f3c9a2e", "127.0.0.1", "-", "true", 0, "1.2ms"), None,
        extra=fields)


def main(argv: list[str]) -> int:
    """Time both formatters; one line each, in µs per record."""
    ap = argparse.ArgumentParser(prog="scripts/bench experiment log_format",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("--repeat", type=int, default=5, help="timings; the best is shown")
    repeat = ap.parse_args(argv).repeat
    for name, formatter in (("text", TextFormatter()), ("JSON", JSONFormatter())):
        call = functools.partial(formatter.format, access_record())
        print(f"{name:5} {best(call, repeat) * 1e6:5.1f} µs per record")
    return 0

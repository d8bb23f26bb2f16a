"""W3C trace context (https://www.w3.org/TR/trace-context/) of every request.

A request's ``traceparent`` is checked as the recommendation says: version 00 (or a later
one, whose first four fields are read as 00's), a trace id and a parent id of lower-case
hex that are not all zeros, two hex digits of flags. One that is absent or malformed is
replaced by a fresh trace (sampled): a request never fails for its trace context, and a
malformed one is never passed on. ``tracestate`` goes with a valid ``traceparent`` only,
and only when it is well formed (at most 32 ``key=value`` members), as it came.

Each request is a span of that trace (`RequestTrace.span_id`, a new id, the
``traceparent`` response header names it); a command it starts runs under a child span
(`RequestTrace.command`: the run's span, ``TRACEPARENT`` in its environment).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from tornado.httputil import HTTPHeaders

from taskrunner.process.environment import CommandTrace

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_PARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>(-.*)?)")
# A list member: a key (simple, or tenant@system) and a value of printable ASCII without
# "," and "=", not ending in a space (the recommendation's grammar).
_MEMBER = re.compile(
    r"([a-z0-9][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_MAX_MEMBERS = 32
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True)
class RequestTrace:
    """The trace one request belongs to and its own span in it."""

    trace_id: str
    """32 hex digits."""
    span_id: str
    """16 hex digits: this request's span."""
    parent_id: str | None
    """16 hex digits: the caller's span, from its ``traceparent``; None for a new trace."""
    flags: str
    """2 hex digits: the caller's trace-flags (01: sampled), ``01`` for a new trace."""
    state: str | None
    """The caller's ``tracestate``, passed on as it came; None without a valid one."""

    @property
    def sampled(self) -> bool:
        """The caller records this trace (flag 01), so its spans are worth exporting."""
        return bool(int(self.flags, 16) & 1)

    def header(self) -> str:
        """The ``traceparent`` response header: this trace, this request's span."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def command(self) -> CommandTrace:
        """The trace context of a command this request starts: a new span (its run), a
        child of this request's."""
        return CommandTrace(trace_id=self.trace_id, span_id=new_span_id(),
                            parent_id=self.span_id, flags=self.flags, state=self.state)


def new_span_id() -> str:
    """A random span id (never all zeros)."""
    while True:
        span = secrets.token_hex(8)
        if span != _ZERO_SPAN:
            return span


def request_trace(headers: HTTPHeaders) -> RequestTrace:
    """The trace context of a request with these ``headers``: the caller's if valid, else
    a fresh trace."""
    parent = parse_traceparent(",".join(headers.get_list(TRACEPARENT)))
    if parent is None:
        trace_id = secrets.token_hex(16)
        while trace_id == _ZERO_TRACE:
            trace_id = secrets.token_hex(16)
        return RequestTrace(trace_id, new_span_id(), None, "01", None)
    trace_id, parent_id, flags = parent
    state = parse_tracestate(headers.get_list(TRACESTATE))
    # Of the flags only "sampled" is defined: the others are not passed on (the
    # recommendation's rule for a version-00 traceparent).
    return RequestTrace(trace_id, new_span_id(), parent_id, f"{int(flags, 16) & 1:02x}", state)


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """``(trace id, parent id, flags)`` of a valid ``traceparent``; None otherwise (two
    headers, which the caller joined with a comma, are not valid either)."""
    match = _PARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version, rest = match["version"], match["rest"]
    if version == "ff" or (version == "00" and rest):
        return None  # ff is forbidden; version 00 has exactly four fields
    if match["trace"] == _ZERO_TRACE or match["parent"] == _ZERO_SPAN:
        return None
    return match["trace"], match["parent"], match["flags"]


def parse_tracestate(values: list[str]) -> str | None:
    """The ``tracestate`` headers as one value if well formed; None if absent, empty or
    malformed (dropped whole, as the recommendation allows)."""
    members = [member.strip(" \t") for value in values for member in value.split(",")]
    members = [member for member in members if member]
    if not members or len(members) > _MAX_MEMBERS:
        return None
    keys = set()
    for member in members:
        if not _MEMBER.fullmatch(member):
            return None
        key = member.partition("=")[0]
        if key in keys:
            return None
        keys.add(key)
    return ",".join(members)

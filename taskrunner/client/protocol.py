"""The client's one implementation, without I/O: what to send and what an answer means.

Each operation is a generator that yields the `Request` to send (and receives its
`Response`) or a `Sleep` (a retry's wait), and returns the parsed value. The sync and async
clients only drive these generators with ``httpx.Client`` or ``httpx.AsyncClient``, so
request building, error mapping and retries are written once. `OutputDecoder` parses the
output stream (NDJSON or Server-Sent Events) from bytes as they arrive.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from taskrunner.client.errors import ProtocolError, ServiceError, service_error
from taskrunner.client.models import Chunk, JobInfo, RunResult, job_info, run_result

T = TypeVar("T")

#: Seconds to wait for a short answer (anything but /run and the output stream).
SHORT_TIMEOUT = 30.0
#: The longest wait a ``Retry-After`` may ask of a retry.
MAX_RETRY_WAIT = 60.0


@dataclass(frozen=True)
class Request:
    """An HTTP request to the service; ``read_timeout`` None waits as long as it takes."""

    method: str
    path: str
    body: Any = None
    read_timeout: float | None = SHORT_TIMEOUT
    accept: str = "application/json"


@dataclass(frozen=True)
class Response:
    """What came back: the status, the headers (lower-case names) and the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Sleep:
    """Wait this many seconds before the next step: a retry of the refusal ``after``,
    honouring its ``Retry-After``."""

    seconds: float
    after: ServiceError


Step = Request | Sleep
Operation = Generator[Step, Response | None, T]


def command_body(args: list[str], timeout: float | None, env: Mapping[str, str] | None,
                 cwd: str | None, stdin: str | None) -> dict[str, Any]:
    """The body of ``POST /run`` and ``POST /jobs``; fields left None are left out."""
    if isinstance(args, str) or not args:
        raise TypeError("args must be a non-empty list of strings, e.g. ['ls', '-l']")
    body: dict[str, Any] = {"args": list(args)}
    for name, value in (("timeout", timeout), ("env", None if env is None else dict(env)),
                        ("cwd", cwd), ("stdin", stdin)):
        if value is not None:
            body[name] = value
    return body


def job_path(job_id: str, tail: str = "") -> str:
    """``/jobs/<id>`` (quoted, so an id never changes the path) plus ``tail``. An id that is
    not text (a lone surrogate, which JSON can carry) is quoted byte for byte, not raised on."""
    return f"/jobs/{quote(job_id, safe='', errors='surrogatepass')}{tail}"


def decode_json(response: Response) -> Any:
    """The JSON of a successful answer; an error answer raises its `ServiceError`."""
    check(response)
    try:
        return json.loads(response.body)
    except ValueError as e:
        raise ProtocolError(f"answered {response.status} with a body that is not JSON") from e


def check(response: Response) -> None:
    """Raise the `ServiceError` (or `ProtocolError`) an error answer stands for."""
    if response.status < 400:
        return
    try:
        body = json.loads(response.body)
        code, message = str(body["error"]), str(body["message"])
    except (ValueError, TypeError, KeyError) as e:
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        raise ProtocolError(f"answered {response.status} ({kind}), not taskrunner's JSON "
                            "error: is this a taskrunner URL?") from e
    raise service_error(response.status, code, message, _retry_after(response.headers))


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: taskrunner sends seconds only


def call(request: Request, retries: int = 0) -> Operation[Any]:
    """Send ``request`` and return its JSON; a refusal with ``Retry-After`` (429, 503: the
    service ran nothing) is sent again after that wait, at most ``retries`` times."""
    attempt = 0
    while True:
        response = yield request
        assert response is not None
        try:
            return decode_json(response)
        except ServiceError as e:
            if e.retry_after is None or attempt >= retries:
                raise
            attempt += 1
            yield Sleep(min(e.retry_after, MAX_RETRY_WAIT), e)


def run(body: dict[str, Any], retries: int) -> Operation[RunResult]:
    """``POST /run``: the command's result, once it has ended."""
    return run_result((yield from call(Request("POST", "/run", body, read_timeout=None),
                                       retries)))


def submit(body: dict[str, Any], retries: int) -> Operation[JobInfo]:
    """``POST /jobs``: the new job, running or queued."""
    return job_info((yield from call(Request("POST", "/jobs", body), retries)))


def action_path(name: str, tail: str = "") -> str:
    """``/actions/<name>`` (quoted, so a name never changes the path) plus ``tail``."""
    return f"/actions/{quote(name, safe='', errors='surrogatepass')}{tail}"


def action_body(params: Mapping[str, Any] | None, timeout: float | None,
                stdin: str | None) -> dict[str, Any]:
    """The body of ``POST /actions/<name>`` and its ``/jobs``; None fields left out."""
    body: dict[str, Any] = {"params": dict(params or {})}
    for name, value in (("timeout", timeout), ("stdin", stdin)):
        if value is not None:
            body[name] = value
    return body


def list_actions() -> Operation[list[dict[str, Any]]]:
    """``GET /actions``: the actions the caller may use, each with its parameters' JSON
    Schema."""
    body = yield from call(Request("GET", "/actions"))
    if not isinstance(body, dict) or not isinstance(body.get("actions"), list):
        raise ProtocolError(f"not an action list: {body!r:.200}")
    return [item for item in body["actions"] if isinstance(item, dict)]


def run_action(name: str, body: dict[str, Any], retries: int) -> Operation[RunResult]:
    """``POST /actions/<name>``: the action's result, once its command has ended."""
    return run_result((yield from call(Request("POST", action_path(name), body,
                                               read_timeout=None), retries)))


def submit_action(name: str, body: dict[str, Any], retries: int) -> Operation[JobInfo]:
    """``POST /actions/<name>/jobs``: the action's new job, running or queued."""
    return job_info((yield from call(Request("POST", action_path(name, "/jobs"), body),
                                     retries)))


def get_job(job_id: str) -> Operation[JobInfo]:
    """``GET /jobs/<id>``."""
    return job_info((yield from call(Request("GET", job_path(job_id)))))


def cancel(job_id: str) -> Operation[JobInfo]:
    """``DELETE /jobs/<id>``: the job once its process group is killed and reaped."""
    return job_info((yield from call(Request("DELETE", job_path(job_id)))))


def list_jobs(state: str | None = None, instance: str | None = None,
              limit: int = 100) -> Operation[list[JobInfo]]:
    """``GET /jobs``: the newest ``limit`` summaries (at most 1000), in ``state`` and of
    ``instance`` if given; with a shared job index, every instance's."""
    filters = {"state": state, "instance": instance}
    query = urlencode({"limit": limit, **{k: v for k, v in filters.items() if v}})
    body = yield from call(Request("GET", f"/jobs?{query}"))
    if not isinstance(body, dict) or not isinstance(body.get("jobs"), list):
        raise ProtocolError(f"not a job list: {body!r:.200}")
    return [job_info(item) for item in body["jobs"]]


def health() -> Operation[dict[str, Any]]:
    """``GET /healthz``: the instance's status object."""
    body = yield from call(Request("GET", "/healthz"))
    if not isinstance(body, dict) or "status" not in body:
        raise ProtocolError(f"not a health answer: {body!r:.200}")
    return body


def output_request(job_id: str) -> Request:
    """``GET /jobs/<id>/output`` as NDJSON, read as long as the job runs."""
    return Request("GET", job_path(job_id, "/output"), read_timeout=None,
                   accept="application/x-ndjson")


class OutputDecoder:
    """Turns the bytes of an output stream, in pieces of any size, into `Chunk`s and, last,
    the final `JobInfo`. Reads NDJSON, or Server-Sent Events when told the content type."""

    def __init__(self, content_type: str) -> None:
        self._sse = content_type.split(";")[0].strip() == "text/event-stream"
        self._buffer = b""
        self.final: JobInfo | None = None

    def feed(self, data: bytes) -> list[Chunk | JobInfo]:
        """The events completed by ``data``."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        events: list[Chunk | JobInfo] = []
        for line in lines:
            if self._sse:
                if not line.startswith(b"data:"):
                    continue  # the blank line between events, comments, other fields
                line = line[5:]
            if line.strip():
                events.append(self._event(line))
        return events

    def close(self) -> JobInfo:
        """The final job; raises `ProtocolError` if the stream ended before it."""
        if self._buffer.strip():
            try:  # a last line without its newline
                self.feed(b"\n")
            except ProtocolError as e:  # cut in the middle
                raise ProtocolError("the output stream ended before the job did") from e
        if self.final is None:
            raise ProtocolError("the output stream ended before the job did")
        return self.final

    def _event(self, line: bytes) -> Chunk | JobInfo:
        try:
            body = json.loads(line)
        except ValueError as e:
            raise ProtocolError(f"not JSON in the output stream: {line[:200]!r}") from e
        if isinstance(body, dict) and "stream" in body and "data" in body:
            return Chunk(str(body["stream"]), str(body["data"]))
        self.final = job_info(body)
        return self.final

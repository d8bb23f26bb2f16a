"""The blocking client: `Client` and its `Job` handles, over ``httpx.Client``.

Only drives the operations of protocol.py; the async twin is aio.py.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import closing
from typing import Any, TypeVar

import httpx

from taskrunner.client import protocol, transport
from taskrunner.client.errors import ServiceError
from taskrunner.client.models import Chunk, JobInfo, RunResult

T = TypeVar("T")


class Client:
    """A taskrunner instance at ``url`` (``http://host:port``, or a prefix behind a proxy),
    with its bearer ``token`` if it wants one.

    ``retries``: how many times a refused request (429, 503 with ``Retry-After``: nothing
    ran) is sent again, after the wait the service asks for; ``on_retry(error, seconds)`` is
    told before each such wait. ``verify``: for https, as httpx takes it (False, a CA
    bundle's path, an ``ssl.SSLContext``). Use it as a context manager,
    or call `close`, to release its connections.
    """

    def __init__(self, url: str, token: str | None = None, *, retries: int = 0,
                 on_retry: Callable[[ServiceError, float], None] | None = None,
                 verify: ssl.SSLContext | str | bool = True) -> None:
        self.url = transport.base_url(url)
        self.retries = retries
        self.on_retry = on_retry
        self._http = httpx.Client(base_url=self.url, headers=transport.headers(token),
                                 verify=transport.verify(self.url, verify))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def run(self, args: list[str], *, timeout: float | None = None,
            env: Mapping[str, str] | None = None, cwd: str | None = None,
            stdin: str | None = None) -> RunResult:
        """Run a command and return its result once it has ended (``POST /run``)."""
        body = protocol.command_body(args, timeout, env, cwd, stdin)
        return self._drive(protocol.run(body, self.retries))

    def submit(self, args: list[str], *, timeout: float | None = None,
               env: Mapping[str, str] | None = None, cwd: str | None = None,
               stdin: str | None = None) -> Job:
        """Start a job and return at once (``POST /jobs``); the job is running or queued."""
        body = protocol.command_body(args, timeout, env, cwd, stdin)
        return Job(self, self._drive(protocol.submit(body, self.retries)))

    def actions(self) -> list[dict[str, Any]]:
        """The actions this caller may use (``GET /actions``): name, description, timeout
        and ``params``, the JSON Schema of their parameters."""
        return self._drive(protocol.list_actions())

    def run_action(self, name: str, params: Mapping[str, Any] | None = None, *,
                   timeout: float | None = None, stdin: str | None = None) -> RunResult:
        """Run the action ``name`` and return its result once it has ended."""
        body = protocol.action_body(params, timeout, stdin)
        return self._drive(protocol.run_action(name, body, self.retries))

    def submit_action(self, name: str, params: Mapping[str, Any] | None = None, *,
                      timeout: float | None = None, stdin: str | None = None) -> Job:
        """Start the action ``name`` as a job and return at once; running or queued."""
        body = protocol.action_body(params, timeout, stdin)
        return Job(self, self._drive(protocol.submit_action(name, body, self.retries)))

    def job(self, job_id: str) -> Job:
        """The job with this id (``GET /jobs/<id>``); `NotFound` if there is none."""
        return Job(self, self._drive(protocol.get_job(job_id)))

    def jobs(self, state: str | None = None, instance: str | None = None,
             limit: int = 100) -> list[Job]:
        """The newest ``limit`` jobs (``GET /jobs``), in ``state`` and of ``instance`` if
        given: every instance's with a shared job index, else the instance's own; their
        ``info`` is a summary."""
        infos = self._drive(protocol.list_jobs(state, instance, limit))
        return [Job(self, info) for info in infos]

    def health(self) -> dict[str, Any]:
        """The instance's ``/healthz`` answer."""
        return self._drive(protocol.health())

    def _drive(self, operation: protocol.Operation[T]) -> T:
        reply: protocol.Response | None = None
        try:
            while True:
                step = operation.send(reply)
                if isinstance(step, protocol.Sleep):
                    if self.on_retry is not None:
                        self.on_retry(step.after, step.seconds)
                    time.sleep(step.seconds)
                    reply = None
                else:
                    reply = self._send(step)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _send(self, request: protocol.Request) -> protocol.Response:
        with transport.translated(self.url):
            answer = self._http.request(request.method, request.path,
                                        **transport.options(request))  # type: ignore[arg-type]
            return transport.response(answer)

    def _stream(self, request: protocol.Request) -> Generator[Chunk | JobInfo, None, None]:
        with transport.translated(self.url), self._http.stream(
                request.method, request.path, **transport.options(request)  # type: ignore[arg-type]
        ) as answer:
            if answer.status_code >= 400:
                answer.read()
                protocol.check(transport.response(answer))
            decoder = protocol.OutputDecoder(answer.headers.get("content-type", ""))
            for data in answer.iter_raw():
                yield from decoder.feed(data)
            decoder.close()


class Job:
    """A job of ``client``'s instance; ``info`` is what was last heard of it."""

    def __init__(self, client: Client, info: JobInfo) -> None:
        self.client = client
        self.id = info.id
        self.info = info

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.info.state}>"

    def refresh(self) -> JobInfo:
        """Ask the instance for the job now (``GET /jobs/<id>``)."""
        self.info = self.client._drive(protocol.get_job(self.id))
        return self.info

    def follow(self) -> Iterator[Chunk]:
        """The job's output from its beginning, each chunk as soon as the command wrote it;
        ends when the job does, with ``info`` then its final state."""
        # closing(): a caller who stops early closes the stream's connection at once.
        with closing(self.client._stream(protocol.output_request(self.id))) as events:
            for event in events:
                if isinstance(event, Chunk):
                    yield event
                else:
                    self.info = event

    def wait(self) -> JobInfo:
        """Block until the job has ended and return its final state (no polling: this
        reads the output stream, which ends with the job)."""
        for _ in self.follow():
            pass
        return self.info

    def cancel(self) -> JobInfo:
        """Kill the job's process group (``DELETE /jobs/<id>``); returns the job once it is
        reaped. A job that already ended is left as it was."""
        self.info = self.client._drive(protocol.cancel(self.id))
        return self.info

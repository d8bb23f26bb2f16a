"""The asyncio client: `AsyncClient` and its `AsyncJob` handles, over ``httpx.AsyncClient``.

Only drives the operations of protocol.py, as its blocking twin sync.py does; the two
differ in ``await`` alone.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from typing import Any, TypeVar

import httpx

from taskrunner.client import protocol, transport
from taskrunner.client.errors import ServiceError
from taskrunner.client.models import Chunk, JobInfo, RunResult

T = TypeVar("T")


class AsyncClient:
    """`taskrunner.client.Client` for asyncio: the same arguments and methods, awaited."""

    def __init__(self, url: str, token: str | None = None, *, retries: int = 0,
                 on_retry: Callable[[ServiceError, float], None] | None = None,
                 verify: ssl.SSLContext | str | bool = True) -> None:
        self.url = transport.base_url(url)
        self.retries = retries
        self.on_retry = on_retry
        self._http = httpx.AsyncClient(base_url=self.url, headers=transport.headers(token),
                                 verify=transport.verify(self.url, verify))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def run(self, args: list[str], *, timeout: float | None = None,
                  env: Mapping[str, str] | None = None, cwd: str | None = None,
                  stdin: str | None = None) -> RunResult:
        """Run a command and return its result once it has ended (``POST /run``)."""
        body = protocol.command_body(args, timeout, env, cwd, stdin)
        return await self._drive(protocol.run(body, self.retries))

    async def submit(self, args: list[str], *, timeout: float | None = None,
                     env: Mapping[str, str] | None = None, cwd: str | None = None,
                     stdin: str | None = None) -> AsyncJob:
        """Start a job and return at once (``POST /jobs``); the job is running or queued."""
        body = protocol.command_body(args, timeout, env, cwd, stdin)
        return AsyncJob(self, await self._drive(protocol.submit(body, self.retries)))

    async def actions(self) -> list[dict[str, Any]]:
        """The actions this caller may use (``GET /actions``): name, description, timeout
        and ``params``, the JSON Schema of their parameters."""
        return await self._drive(protocol.list_actions())

    async def run_action(self, name: str, params: Mapping[str, Any] | None = None, *,
                         timeout: float | None = None, stdin: str | None = None) -> RunResult:
        """Run the action ``name`` and return its result once it has ended."""
        body = protocol.action_body(params, timeout, stdin)
        return await self._drive(protocol.run_action(name, body, self.retries))

    async def submit_action(self, name: str, params: Mapping[str, Any] | None = None, *,
                            timeout: float | None = None,
                            stdin: str | None = None) -> AsyncJob:
        """Start the action ``name`` as a job and return at once; running or queued."""
        body = protocol.action_body(params, timeout, stdin)
        return AsyncJob(self, await self._drive(protocol.submit_action(name, body,
                                                                       self.retries)))

    async def job(self, job_id: str) -> AsyncJob:
        """The job with this id (``GET /jobs/<id>``); `NotFound` if there is none."""
        return AsyncJob(self, await self._drive(protocol.get_job(job_id)))

    async def jobs(self, state: str | None = None, instance: str | None = None,
                   limit: int = 100) -> list[AsyncJob]:
        """The newest ``limit`` jobs, in ``state`` and of ``instance`` if given: every
        instance's with a shared job index, else the instance's own."""
        infos = await self._drive(protocol.list_jobs(state, instance, limit))
        return [AsyncJob(self, info) for info in infos]

    async def health(self) -> dict[str, Any]:
        """The instance's ``/healthz`` answer."""
        return await self._drive(protocol.health())

    async def _drive(self, operation: protocol.Operation[T]) -> T:
        reply: protocol.Response | None = None
        try:
            while True:
                step = operation.send(reply)
                if isinstance(step, protocol.Sleep):
                    if self.on_retry is not None:
                        self.on_retry(step.after, step.seconds)
                    await asyncio.sleep(step.seconds)
                    reply = None
                else:
                    reply = await self._send(step)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _send(self, request: protocol.Request) -> protocol.Response:
        with transport.translated(self.url):
            answer = await self._http.request(request.method, request.path,
                                              **transport.options(request))  # type: ignore[arg-type]
            return transport.response(answer)

    async def _stream(self, request: protocol.Request
                      ) -> AsyncGenerator[Chunk | JobInfo, None]:
        with transport.translated(self.url):
            async with self._http.stream(request.method, request.path,
                                         **transport.options(request)  # type: ignore[arg-type]
                                         ) as answer:
                if answer.status_code >= 400:
                    await answer.aread()
                    protocol.check(transport.response(answer))
                decoder = protocol.OutputDecoder(answer.headers.get("content-type", ""))
                async for data in answer.aiter_raw():
                    for event in decoder.feed(data):
                        yield event
                decoder.close()


class AsyncJob:
    """`taskrunner.client.Job` for asyncio."""

    def __init__(self, client: AsyncClient, info: JobInfo) -> None:
        self.client = client
        self.id = info.id
        self.info = info

    def __repr__(self) -> str:
        return f"<AsyncJob {self.id} {self.info.state}>"

    async def refresh(self) -> JobInfo:
        """Ask the instance for the job now (``GET /jobs/<id>``)."""
        self.info = await self.client._drive(protocol.get_job(self.id))
        return self.info

    async def follow(self) -> AsyncIterator[Chunk]:
        """The job's output from its beginning, each chunk as soon as the command wrote it;
        ends when the job does, with ``info`` then its final state."""
        # aclosing(): a caller who stops early closes the stream's connection at once.
        async with aclosing(self.client._stream(protocol.output_request(self.id))) as events:
            async for event in events:
                if isinstance(event, Chunk):
                    yield event
                else:
                    self.info = event

    async def wait(self) -> JobInfo:
        """Wait until the job has ended and return its final state (reads the output
        stream, which ends with the job: no polling)."""
        async for _ in self.follow():
            pass
        return self.info

    async def cancel(self) -> JobInfo:
        """Kill the job's process group (``DELETE /jobs/<id>``); returns the job once it is
        reaped. A job that already ended is left as it was."""
        self.info = await self.client._drive(protocol.cancel(self.id))
        return self.info

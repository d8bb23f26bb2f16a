"""HTTP handlers of the jobs API: ``/jobs``, ``/jobs/<id>``, ``/jobs/<id>/output``.

A job is answered at once: 202 ``running``, 202 ``queued`` (every slot busy, room in the
admission queue; it starts when a slot frees), or an error (429 when there is no room
either, 503 ``store_unavailable`` when ``--state-dir`` cannot record it).

``GET /jobs`` pages through the job index (every instance sharing it), newest first, with
filters ``state``, ``instance``, a search ``q`` (`taskrunner.jobs.index.Search`) and a
cursor ``before``; ``GET /jobs/<id>`` answers for a
job of any instance that shares the index. Live output and cancelling need the job's owner:
asked of another instance for a job still unfinished, that instance forwards the request to
the owner (`taskrunner.web.forward`) and answers 503 ``owner_unreachable`` only when the
owner cannot be asked.

The output stream sends what a job already wrote, then each new chunk as it comes, flushed
at once, then the final job object: NDJSON by default, Server-Sent Events when the client
accepts ``text/event-stream``. A chunk sent live carries ``t``, the Unix time this instance
read it at (within the stream's 100 ms of the command writing it); what was written before
the stream began carries none, since the log keeps no times. Old clients read ``stream``
and ``data`` and ignore ``t``. A client that leaves the stream only ends its stream.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import time
from typing import Any

import orjson
from tornado.iostream import StreamClosedError

from taskrunner.errors import InvalidField, JobNotFound
from taskrunner.jobs.index import DEFAULT_PAGE, MAX_PAGE, MAX_SEARCH, JobQuery, parse_cursor
from taskrunner.jobs.job import Job, JobState
from taskrunner.process.output import OutputCursor
from taskrunner.web.base import CommandHandler, JSONHandler
from taskrunner.web.forward import Forward

log = logging.getLogger("taskrunner.jobs")


async def visible_job(handler: JSONHandler, job_id: str) -> Job:
    """The job ``job_id`` (this instance's, or another's from the index) if the handler's
    caller may see it; else `JobNotFound`, the same answer as for a job that does not
    exist, so ids of other callers' jobs tell nothing."""
    job = await handler.ctx.jobs.find(job_id)
    caller = handler.caller
    if caller is not None and not caller.owns(job.realm, job.caller):
        raise JobNotFound(f"no job {job_id!r}")
    if caller is not None and not caller.has("jobs") and job.action is None:
        # A caller with the actions scope alone sees only the jobs its actions made.
        raise JobNotFound(f"no job {job_id!r}")
    return job


class OwnerForwarding(JSONHandler):
    """A route that only a job's owner can answer while the job runs (its live output, a
    cancel): asked of another instance, it is forwarded to the owner (`Forward`)."""

    _forward: Forward | None = None

    async def forwarded(self, job: Job, what: str) -> bool:
        """Forward the request to ``job``'s owner and answer with the owner's answer, if
        only the owner can (the job is unfinished and not this instance's); whether it
        was. ``what`` names the request in an ``owner_unreachable`` message."""
        if job.done or self.ctx.jobs.owns(job):
            return False
        self._forward = Forward(self)
        await self._forward.run(job, what)
        return True

    def on_connection_close(self) -> None:
        if self._forward is not None:
            self._forward.caller_left()
        super().on_connection_close()


def listing_query(handler: JSONHandler) -> JobQuery:
    """The filters, size and cursor of a ``GET /jobs``; `InvalidField` for a bad one."""
    state = handler.get_query_argument("state", None)
    if state is not None and state not in set(JobState):
        raise InvalidField(f"'state' must be one of {', '.join(JobState)}")
    instance = handler.get_query_argument("instance", None)
    text = handler.get_query_argument("limit", str(DEFAULT_PAGE))
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise InvalidField(f"'limit' must be an integer from 1 to {MAX_PAGE}")
    before = handler.get_query_argument("before", None)
    search = handler.get_query_argument("q", None)
    if search is not None and len(search) > MAX_SEARCH:
        raise InvalidField(f"'q' must be at most {MAX_SEARCH} characters")
    caller = handler.caller
    return JobQuery(state=state, instance=instance or None, limit=int(text),
                    search=search or None,
                    before=None if before is None else parse_cursor(before),
                    caller=None if caller is None or caller.sees_all else caller.name,
                    realm=None if caller is None else caller.realm)


class JobsHandler(CommandHandler):
    """``POST /jobs`` starts a job from a ``/run`` body (and an optional ``callback_url``);
    ``GET /jobs`` lists a page of jobs (the caller's own, or every one for ``admin``)."""

    scope = "jobs"

    async def post(self) -> None:
        if self._finished:
            return
        spec, callback_url = self.parse_job()
        await self.submit_job(spec, self.policy, callback_url)

    async def get(self) -> None:
        jobs, next_page = await self.ctx.jobs.page(listing_query(self))
        self.write_json({"jobs": jobs, "next": next_page})


class JobHandler(OwnerForwarding):
    """``GET /jobs/<id>`` shows a job; ``DELETE /jobs/<id>`` cancels it (forwarded to the
    owner of a running job of another instance; ``actions``: a job one of the caller's
    actions made)."""

    scope = ("jobs", "actions")

    async def get(self, job_id: str) -> None:
        registry = self.ctx.jobs
        self.write_json(await registry.describe(await visible_job(self, job_id)))

    async def delete(self, job_id: str) -> None:
        registry = self.ctx.jobs
        job = await visible_job(self, job_id)
        if await self.forwarded(job, "cancel"):
            return
        job = await registry.cancel(job)
        self.exit_status = job.status
        body = await registry.describe(job)
        if self.request.connection is None or self._finished:
            return
        self.write_json(body)


def _chunk(stream: str, text: str, at: float | None) -> dict[str, Any]:
    return {"stream": stream, "data": text} if at is None else {
        "stream": stream, "data": text, "t": at}


class JobOutputHandler(OwnerForwarding):
    """``GET /jobs/<id>/output``: the job's output from its beginning, live, then the job
    (from its owner, through this instance, for a running job of another instance)."""

    scope = ("jobs", "actions")
    _gone: asyncio.Future[None] | None = None

    async def get(self, job_id: str) -> None:
        registry = self.ctx.jobs
        job = await visible_job(self, job_id)
        if await self.forwarded(job, "stream the live output of"):
            return
        output = await registry.output(job)  # the live log, or the stored one read back
        sse = "text/event-stream" in self.request.headers.get("Accept", "")
        self.set_header("Content-Type", "text/event-stream" if sse else "application/x-ndjson")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # nginx: pass each chunk on at once
        self._gone = asyncio.get_running_loop().create_future()
        decoders = {name: codecs.getincrementaldecoder("utf-8")("replace")
                    for name in ("stdout", "stderr")}
        cursor = OutputCursor()
        replay = True  # the first read sends what was written before: its times are unknown
        while True:
            # Ask for the next change before sending, so nothing written meanwhile is missed.
            change = job.changed()
            done = job.done
            if job.output is not None and job.output is not output:
                # A queued job's log is a placeholder, empty, until its command starts with
                # a log of its own (Job.start): follow that one from its beginning.
                output, cursor = job.output, OutputCursor()
            now = None if replay else round(time.time(), 3)
            replay = False
            for stream, data in output.read(cursor):
                text = decoders[stream].decode(data)
                if text:
                    self._emit(_chunk(stream, text, now), sse)
            if done:
                for stream, decoder in decoders.items():
                    tail = decoder.decode(b"", final=True)
                    if tail:
                        self._emit(_chunk(stream, tail, now), sse)
                self._emit(job.to_json(output), sse)
                if not self._gone.done():
                    self.finish()
                return
            try:
                await self.flush()
            except StreamClosedError:
                return
            await asyncio.wait([change, self._gone], return_when=asyncio.FIRST_COMPLETED)
            if self._gone.done():
                log.debug("job %s: stream client left; the job goes on", job.id)
                return

    def _emit(self, body: dict[str, Any], sse: bool) -> None:
        line = orjson.dumps(body)
        self.write(b"data: " + line + b"\n\n" if sse else line + b"\n")

    def on_connection_close(self) -> None:
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        super().on_connection_close()

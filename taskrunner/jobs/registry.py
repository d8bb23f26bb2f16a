"""`JobRegistry`: the jobs of one instance, from accepted to expired, and their store.

A job is a command started through the launcher whose caller does not wait for it: the
registry answers at once with the job (``running``, or ``queued`` when every slot is busy
and the admission queue has room; 429 when it has none), keeps its output as it arrives
(for polling and for live streams), and keeps the finished job for ``--job-ttl`` seconds,
at most ``--max-jobs`` jobs in all, dropping the oldest finished ones first.

The states of a job and their edges are drawn in `taskrunner.jobs.job`.

With a store (``--state-dir``), a job is written before its command starts (if it cannot
be, the job is refused with 503 ``store_unavailable`` and nothing runs). Every ``heartbeat``
seconds the output that running jobs wrote since is appended to the store with a heartbeat
time, so a ``lost`` job keeps what it wrote until then and ends at the last heartbeat. Once
a finished job is written, its output leaves memory: it is read back from the store when
asked for (the last few are cached), so memory holds running jobs' output (at most
2 x ``--max-output`` each), the cache, and output still waiting to be written.

With a store, the index holds the jobs of every instance that shares it (the instances of
a host in SQLite, of a cluster in PostgreSQL): `page` pages through all of them, and `find`
answers for a job of another instance from its row (a *detached* job: read-only, its
output in the store). This instance's own jobs always come from memory.

A job with a ``callback_url`` hands itself to the `CallbackSender` once it has ended (and,
found lost at a restart, once it is marked so); the outcome of each try is saved with the
job. A callback still pending when the instance stopped is failed at the next start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import orjson
from tornado.ioloop import IOLoop, PeriodicCallback

from taskrunner.errors import JobNotFound, TaskRunnerError, TooManyRequests
from taskrunner.jobs.callbacks import CallbackSender
from taskrunner.jobs.index import JobQuery, Search, cursor, in_view
from taskrunner.jobs.job import Job, JobState, new_job_id
from taskrunner.jobs.output import OutputCache
from taskrunner.jobs.schema import JobRecord
from taskrunner.process.engine import CommandResult, CommandSpec
from taskrunner.process.output import OutputLog

if TYPE_CHECKING:
    from taskrunner.jobs.store import JobStore
from taskrunner.process.launcher import Launcher, Policy

log = logging.getLogger("taskrunner.jobs")

CACHED_OUTPUTS = 4
"""How many finished jobs' outputs (at --max-output per stream) the read cache holds."""


class JobRegistry:
    """Every job this instance knows: queued, running, and finished ones until they expire."""

    def __init__(self, launcher: Launcher, instance: str, *, max_output: int, job_ttl: float,
                 max_jobs: int, store: JobStore | None = None,
                 heartbeat: float = 1.0, callbacks: CallbackSender | None = None) -> None:
        self.launcher = launcher
        self.instance = instance
        self.max_output = max_output
        self.job_ttl = job_ttl
        self.max_jobs = max_jobs
        self.store = store
        self.callbacks = callbacks or CallbackSender()
        """Delivers completion callbacks; without one given, every callback is refused."""
        self.jobs: dict[str, Job] = {}  # in creation order
        self._finished: OrderedDict[str, Job] = OrderedDict()  # in order of finishing
        self._accepting = 0  # jobs being written to the store before they are kept
        self._cache = OutputCache(CACHED_OUTPUTS * 2 * max_output)
        self._expiry: object | None = None
        self._heartbeat = PeriodicCallback(self._beat, heartbeat * 1000)
        self._loop = IOLoop.current()
        if store is not None:
            loop = self._loop
            store.on_written = lambda records: loop.add_callback(self._written, records)

    def restore(self) -> None:
        """Open the job index (``--state-dir`` or ``--state-url``), load this instance's jobs
        (unfinished ones as ``lost``), start writing.

        Raise `taskrunner.errors.StoreError` if the store cannot be used.
        """
        if self.store is None:
            return
        self.store.open()
        records = self.store.load()
        last_alive = self.store.last_heartbeat()
        lost, interrupted = [], []
        for record in records:
            job = Job.from_record(record, self.max_output)
            if not job.done:
                job.mark_lost(last_alive)
                lost.append(job)
            elif job.callback is not None and job.callback.status == "pending":
                # Its instance died delivering it (a clean stop records the failure itself).
                job.callback.stopped("the instance stopped before the callback was delivered")
                interrupted.append(job)
            self.jobs[job.id] = job
        for job in sorted(self.jobs.values(), key=lambda job: job.finished or 0.0):
            self._finished[job.id] = job
        self.store.start()
        for job in lost + interrupted:
            self.store.put(job.id, job.record())
        for job in lost:
            self._call_back(job)  # it ended now, as far as its caller can know
        self._heartbeat.start()
        log.info("restored %s jobs from %s (%s lost)", len(records), self.store.where, len(lost))
        self._evict()

    def get(self, job_id: str) -> Job:
        """The job ``job_id``; raise `JobNotFound` if there is none (or no longer)."""
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r} on instance {self.instance!r}")
        return job

    async def find(self, job_id: str) -> Job:
        """The job ``job_id``: this instance's own, or another's from the index (detached:
        read-only, ``job.instance`` names its owner); `JobNotFound` if neither has it."""
        job = self.jobs.get(job_id)
        if job is not None:
            return job
        if self.store is not None:
            record = await self.store.get(job_id)
            if record is not None and record.instance != self.instance:
                return Job.from_record(record, self.max_output)
        raise JobNotFound(f"no job {job_id!r}")

    def owns(self, job: Job) -> bool:
        """True for a job of this instance, False for one of another read from the index."""
        return self.jobs.get(job.id) is job

    async def page(self, query: JobQuery) -> tuple[list[dict[str, Any]], str | None]:
        """One page of jobs (summaries), newest first: the whole index's with a store, else
        this instance's; and the ``before`` cursor of the next page (None on the last)."""
        wanted = dataclasses.replace(query, limit=query.limit + 1)
        if self.store is None:
            found = self._matching(wanted)
        else:
            found = [self.jobs.get(record.id) or Job.from_record(record, self.max_output)
                     for record in await self.store.find(wanted)]
        more = len(found) > query.limit
        found = found[:query.limit]
        next_page = cursor(found[-1].created, found[-1].id) if more else None
        # This instance's own jobs as they are now (the index may be a batch behind): one
        # that has since left the state asked for is left out, without moving the cursor.
        jobs = [job.to_json() for job in found
                if query.state is None or job.state == query.state]
        return jobs, next_page

    def _matching(self, query: JobQuery) -> list[Job]:
        # This instance's jobs for a listing without an index.
        search = None if query.search is None else Search(query.search)
        jobs = [job for job in self.jobs.values()
                if (query.state is None or job.state == query.state)
                and (query.instance is None or job.instance == query.instance)
                and (query.caller is None or job.caller == query.caller)
                and (query.realm is None
                     or in_view(job.realm, job.caller, query.realm, query.caller))
                and (query.before is None or (job.created, job.id) < query.before)
                and (search is None or search.matches(job.args, job.caller, job.id))]
        jobs.sort(key=lambda job: (job.created, job.id), reverse=True)
        return jobs[:query.limit]

    async def output(self, job: Job) -> OutputLog:
        """The job's output: in memory while it runs, else read back from the store."""
        if job.output is not None:
            return job.output
        cached = self._cache.get(job.id)
        if cached is not None:
            return cached
        assert self.store is not None, "output leaves memory only for the store"
        kept = OutputLog.from_chunks(await self.store.read_output(job.id))
        if job.id in self.jobs:
            self._cache.put(job.id, kept)
        return kept

    async def describe(self, job: Job) -> dict[str, Any]:
        """The whole job object, its output included."""
        return job.to_json(await self.output(job))

    async def submit(self, spec: CommandSpec, policy: Policy | None = None,
                     caller: str | None = None, callback_url: str | None = None,
                     realm: str | None = None, action: str | None = None,
                     params: dict[str, Any] | None = None) -> Job:
        """Accept ``spec`` as a job of ``caller`` of ``realm`` under its ``policy`` (default: the
        instance's), started now or queued for a slot; raise if it cannot be (the
        allowlist, a missing program, the caller's share, no slot nor queue room, the store
        failing). The job holds the caller's share from now until it ends. ``action`` and
        ``params``: the named action it runs, with its checked parameters, kept with it.
        ``callback_url`` (checked by the caller against the sender's hosts) is called once
        the job ends."""
        self._make_room()
        reservation = self.launcher.reserve(spec, policy)  # 403, 422, 429 now
        job = Job(new_job_id(self.instance), self.instance, list(spec.args), self.max_output,
                  caller=caller, callback_url=callback_url, realm=realm)
        job.timeout, job.cwd = spec.timeout, spec.cwd
        job.env_names = None if spec.env is None else sorted(spec.env)
        job.action, job.params = action, params
        job.trace = spec.trace
        job.trace_id = None if spec.trace is None else spec.trace.trace_id
        job.reservation = reservation
        # Stored as it is about to be: running if it holds a slot (if it then cannot start,
        # the row goes), else queued.
        record = job.record()
        if reservation.ready.done():
            record = dataclasses.replace(record, state=str(JobState.RUNNING))
        if self.store is not None:
            self._accepting += 1
            try:
                await self.store.create(record)
            except BaseException:
                job.reservation = None
                reservation.cancel()
                raise
            finally:
                self._accepting -= 1
        self.jobs[job.id] = job
        if reservation.ready.done():
            try:
                self._start(job)
            except TaskRunnerError:
                self._forget(job)  # it never started: the caller gets the error, as for /run
                raise
            if record.state != job.state:
                self._save(job)  # a slot came while the row was being written
        else:
            reservation.ready.add_done_callback(lambda _: self._on_slot(job))
            log.debug("job %s queued: program %s", job.id, job.args[0])
        return job

    async def cancel(self, job: Job) -> Job:
        """Cancel a queued job (it never starts), or SIGKILL a running job's group and return
        once it is reaped; a job that has ended is as it is."""
        if job.state is JobState.QUEUED:
            if job.reservation is not None:
                job.reservation.cancel()  # it leaves the queue, or passes on its slot
                job.reservation = None
            job.abandon(None)
            log.info("job %s cancelled before it started: program %s", job.id, job.args[0])
            self._ended(job)
        elif job.command is not None:
            command = job.command
            command.cancel()
            await asyncio.shield(command.result)
        return job

    def cancel_running(self) -> None:
        """SIGKILL every running job (for shutdown); each ends ``cancelled``."""
        for job in list(self.jobs.values()):
            if job.command is not None:
                job.command.cancel()

    async def stop_callbacks(self, grace: float) -> None:
        """Give pending callbacks up to ``grace`` seconds, then record them failed."""
        await self.callbacks.close(grace)

    async def close_reads(self) -> None:
        """Release what the store's reads hold (before `close`)."""
        if self.store is not None:
            await self.store.close_reads()

    def close(self) -> None:
        """Stop the timers and write everything still queued to the store."""
        self._heartbeat.stop()
        if self._expiry is not None:
            self._loop.remove_timeout(self._expiry)
            self._expiry = None
        if self.store is not None:
            self.store.close()

    def _on_slot(self, job: Job) -> None:
        # A queued job's place in line came through (a slot, or the instance stopping).
        if job.state is not JobState.QUEUED:
            return  # cancelled meanwhile; cancel() passed the slot on
        try:
            self._start(job)
        except TaskRunnerError as exc:
            job.abandon(exc)
            log.info("job %s %s: not started: %s", job.id, job.state, exc.message)
            self._ended(job)
            return
        self._save(job)  # stored as queued until now

    def _start(self, job: Job) -> None:
        # Start a job whose reservation's turn has come; if it cannot start, the
        # reservation gave everything back and this raises.
        reservation, job.reservation = job.reservation, None
        assert reservation is not None
        command = reservation.start(job.on_output)
        job.start(command)
        pid = command.pid
        # Synchronous: the job's state is final by the time command.result is set.
        command.on_finish(lambda result: self._on_result(job, pid, result))
        log.debug("job %s started: pid %s program %s", job.id, pid, command.program)

    def _on_result(self, job: Job, pid: int, result: CommandResult) -> None:
        job.finish(result)
        log.info("job %s %s: pid %s status %s duration %.3fs program %s", job.id, job.state,
                 pid, job.status, job.duration or 0.0, job.args[0])
        self._ended(job)

    def _ended(self, job: Job) -> None:
        self._finished[job.id] = job
        if self.store is not None:
            # Its state and the rest of its output in one write; once written (_written),
            # the output leaves memory.
            self.store.put(job.id, job.record(), job.unflushed())
        self._call_back(job)
        self._evict()

    def _call_back(self, job: Job) -> None:
        # The job's final JSON goes out from a task of its own; nothing here waits for it.
        if job.callback_url is not None:
            self.callbacks.send(job, lambda: self._final_body(job), self._callback_saved)

    async def _final_body(self, job: Job) -> bytes:
        return orjson.dumps(await self.describe(job))

    def _callback_saved(self, job: Job) -> None:
        # A job dropped meanwhile (ttl, max-jobs) stays dropped: no row comes back for it.
        if self.jobs.get(job.id) is job:
            self._save(job)

    def _written(self, records: list[JobRecord]) -> None:
        # The store wrote these records. A finished job's final record is written with the
        # last of its output: from now on the store has it all, and memory need not. The
        # cache keeps it a while: a finished job is often read right after it ends.
        for record in records:
            job = self.jobs.get(record.id)
            if record.finished is None or job is None or job.output is None:
                continue
            self._cache.put(job.id, job.output)
            job.output = None

    def _beat(self) -> None:
        # The store learns what running jobs wrote since the last beat, and that we live.
        assert self.store is not None
        for job in self.jobs.values():
            if job.state is JobState.RUNNING:
                chunks = job.unflushed()
                if chunks:
                    self.store.put(job.id, chunks=chunks)
        self.store.heartbeat(time.time())

    def _save(self, job: Job) -> None:
        if self.store is not None:
            self.store.put(job.id, job.record())

    def _forget(self, job: Job) -> None:
        # A job refused after its row was written: as if it had never been.
        del self.jobs[job.id]
        if self.store is not None:
            self.store.delete(job.id)

    def _drop(self, job: Job, why: str) -> None:
        del self.jobs[job.id]
        del self._finished[job.id]
        self._cache.discard(job.id)
        if self.store is not None:
            self.store.delete(job.id)
        log.debug("job %s dropped (%s)", job.id, why)

    def _make_room(self) -> None:
        # One slot for the job about to start: drop the oldest finished job if we are full.
        while len(self.jobs) + self._accepting >= self.max_jobs and self._finished:
            self._drop(next(iter(self._finished.values())), "max-jobs")
        if len(self.jobs) + self._accepting >= self.max_jobs:
            raise TooManyRequests(
                f"all {self.max_jobs} job slots hold unfinished jobs; try again later")

    def _evict(self) -> None:
        while len(self.jobs) > self.max_jobs and self._finished:
            self._drop(next(iter(self._finished.values())), "max-jobs")
        deadline = time.time() - self.job_ttl
        while self._finished:
            oldest = next(iter(self._finished.values()))
            if (oldest.finished or 0.0) > deadline:
                break
            self._drop(oldest, "ttl")
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        # One timer, for the oldest finished job. A job that finishes goes to the back, so
        # the timer only needs setting when there is none; when it fires it sets the next.
        if self._expiry is None and self._finished:
            oldest = next(iter(self._finished.values()))
            delay = max(0.0, (oldest.finished or 0.0) + self.job_ttl - time.time())
            self._expiry = self._loop.call_later(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry = None
        self._evict()

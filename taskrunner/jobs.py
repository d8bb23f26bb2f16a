"""Background jobs: the `Job` state machine and the `JobRegistry` that keeps jobs.

A job is a command started through the launcher whose caller does not wait for it: the
registry hands back an id, keeps the job's output as it arrives (for polling and for live
streams), and keeps the finished job for ``--job-ttl`` seconds, at most ``--max-jobs``
jobs in all, dropping the oldest finished ones first.

States, and every edge (all taken in `Job._transition`)::

    running ──> exited       the command ran to its end (any exit status)
        │────> timed_out    its deadline passed and its group was SIGKILLed
        │────> cancelled    DELETE /jobs/<id>, or the end of the shutdown grace, SIGKILLed it
        └────> lost         the instance died while it ran (found so in --state-dir)

Output is kept per stream up to ``--max-output`` bytes in an `OutputLog`, which also
remembers how stdout and stderr were interleaved, so a stream can replay it in order.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from tornado.ioloop import IOLoop

from taskrunner.engine import Command, CommandResult, CommandSpec
from taskrunner.errors import JobNotFound, TooManyRequests
from taskrunner.job_output import OutputLog
from taskrunner.job_store import JobRecord, JobStore
from taskrunner.launcher import Launcher

log = logging.getLogger("taskrunner.jobs")


class JobState(enum.StrEnum):
    """The named states of a job."""

    RUNNING = "running"
    EXITED = "exited"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"


_EDGES: dict[JobState, frozenset[JobState]] = {
    JobState.RUNNING: frozenset({JobState.EXITED, JobState.TIMED_OUT, JobState.CANCELLED,
                                 JobState.LOST}),
}


def new_job_id(instance: str) -> str:
    """``<instance>.<128 random bits, URL-safe>``: unguessable, and routable by its prefix."""
    return f"{instance}.{secrets.token_urlsafe(16)}"


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class Job:
    """One background command: its state, its output so far, and how it ended."""

    def __init__(self, job_id: str, instance: str, args: list[str], limit: int,
                 created: float | None = None) -> None:
        self.id = job_id
        self.instance = instance
        self.args = args
        self.state = JobState.RUNNING
        self.created = time.time() if created is None else created
        self.finished: float | None = None
        self.status: int | None = None
        self.timed_out = False
        self.duration: float | None = None
        self.truncated = {"stdout": False, "stderr": False}
        self.output = OutputLog(limit)
        self.command: Command | None = None
        self._change: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.state}>"

    @property
    def done(self) -> bool:
        """True once the job has left ``running``."""
        return self.state is not JobState.RUNNING

    def on_output(self, stream: str, data: bytes) -> None:
        """The engine's listener: keep what fits under ``--max-output`` and wake the streams."""
        if self.output.feed(stream, data):
            self._notify()

    def changed(self) -> asyncio.Future[None]:
        """A future resolved at the next chunk of output or when the job ends."""
        if self._change is None or self._change.done():
            self._change = asyncio.get_running_loop().create_future()
        return self._change

    def text(self, stream: str) -> str:
        """What was kept of ``stream``, decoded as UTF-8 (undecodable bytes become U+FFFD)."""
        return self.output.text(stream)

    def finish(self, result: CommandResult) -> None:
        """Record how the command ended and move to the state that says so."""
        self.status = result.status
        self.timed_out = result.timed_out
        self.duration = result.duration
        self.truncated = {"stdout": result.stdout_truncated, "stderr": result.stderr_truncated}
        self.command = None
        self._transition(result)

    def mark_lost(self) -> None:
        """The job was stored as running by an instance that died: it is lost."""
        self._transition(None)

    def _transition(self, result: CommandResult | None) -> None:
        # The one place a job changes state.
        if result is None:
            # running -> lost: found running in the store at startup; its instance died
            # without seeing it end, so how it ended (status) is unknown.
            new = JobState.LOST
        elif result.timed_out:
            # running -> timed_out: the deadline's SIGKILL came first, even if a cancel followed.
            new = JobState.TIMED_OUT
        elif result.cancelled:
            # running -> cancelled: DELETE /jobs/<id> (or the shutdown grace running out)
            # killed the group before the command exited.
            new = JobState.CANCELLED
        else:
            # running -> exited: it ended by itself (or a kill not sent through this job).
            new = JobState.EXITED
        if new not in _EDGES.get(self.state, frozenset()):
            raise RuntimeError(f"job {self.id}: no transition {self.state} -> {new}")
        self.state = new
        self.finished = time.time()
        self._notify()

    def _notify(self) -> None:
        if self._change is not None and not self._change.done():
            self._change.set_result(None)

    def to_json(self, summary: bool = False) -> dict[str, Any]:
        """The job object of the API; a ``summary`` leaves out stdout and stderr."""
        body: dict[str, Any] = {
            "id": self.id,
            "instance": self.instance,
            "state": str(self.state),
            "args": self.args,
            "status": self.status,
        }
        if not summary:
            body["stdout"] = self.text("stdout")
            body["stderr"] = self.text("stderr")
        body.update({
            "timed_out": self.timed_out,
            "duration": None if self.duration is None else round(self.duration, 6),
            "stdout_truncated": self.truncated["stdout"],
            "stderr_truncated": self.truncated["stderr"],
            "created": _iso(self.created),
            "finished": _iso(self.finished),
        })
        return body

    def record(self) -> JobRecord:
        """The job as the store keeps it."""
        return JobRecord(
            id=self.id, instance=self.instance, state=str(self.state), args=self.args,
            status=self.status, stdout=self.text("stdout"), stderr=self.text("stderr"),
            timed_out=self.timed_out, duration=self.duration,
            stdout_truncated=self.truncated["stdout"], stderr_truncated=self.truncated["stderr"],
            created=self.created, finished=self.finished)

    @classmethod
    def from_record(cls, record: JobRecord, limit: int) -> Job:
        """A finished (or lost) job as it was stored."""
        job = cls(record.id, record.instance, record.args, limit, created=record.created)
        # Restored as stored, not transitioned: a stored "running" goes on to lost in restore().
        job.state = JobState(record.state)
        job.finished = record.finished
        job.status = record.status
        job.timed_out = record.timed_out
        job.duration = record.duration
        job.truncated = {"stdout": record.stdout_truncated, "stderr": record.stderr_truncated}
        for stream, text in (("stdout", record.stdout), ("stderr", record.stderr)):
            job.output.feed(stream, text.encode("utf-8"))
        return job


class JobRegistry:
    """Every job this instance knows: running ones, and finished ones until they expire."""

    def __init__(self, launcher: Launcher, instance: str, *, max_output: int, job_ttl: float,
                 max_jobs: int, store: JobStore | None = None) -> None:
        self.launcher = launcher
        self.instance = instance
        self.max_output = max_output
        self.job_ttl = job_ttl
        self.max_jobs = max_jobs
        self.store = store
        self.jobs: dict[str, Job] = {}  # in creation order
        self._finished: OrderedDict[str, Job] = OrderedDict()  # in order of finishing
        self._expiry: object | None = None
        self._loop = IOLoop.current()

    def restore(self) -> None:
        """Load the jobs of ``--state-dir`` (running ones as ``lost``) and start the writer."""
        if self.store is None:
            return
        records = self.store.load()
        lost = []
        for record in records:
            job = Job.from_record(record, self.max_output)
            if job.state is JobState.RUNNING:
                job.mark_lost()
                lost.append(job)
            self.jobs[job.id] = job
        for job in sorted(self.jobs.values(), key=lambda job: job.finished or 0.0):
            self._finished[job.id] = job
        self.store.start()
        for job in lost:
            self._save(job)
        log.info("restored %s jobs from %s (%s lost)", len(records), self.store.path, len(lost))
        self._evict()

    def get(self, job_id: str) -> Job:
        """The job ``job_id``; raise `JobNotFound` if there is none (or no longer)."""
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r} on instance {self.instance!r}")
        return job

    def newest_first(self) -> list[Job]:
        """Every job kept, newest first."""
        return list(reversed(self.jobs.values()))

    async def submit(self, spec: CommandSpec) -> Job:
        """Start ``spec`` as a job; raise what the launcher raises if it cannot start."""
        self._make_room()
        job = Job(new_job_id(self.instance), self.instance, list(spec.args), self.max_output)
        command = await self.launcher.launch(spec, job.on_output)
        job.command = command
        self.jobs[job.id] = job
        self._save(job)
        pid = command.pid
        # Synchronous: the job's state is final by the time command.result is set.
        command.on_finish(lambda result: self._on_result(job, pid, result))
        log.debug("job %s started: pid %s program %s", job.id, command.pid, command.program)
        return job

    async def cancel(self, job: Job) -> Job:
        """SIGKILL a running job's group and return once it is reaped; a done job is as is."""
        if job.command is not None:
            command = job.command
            command.cancel()
            await asyncio.shield(command.result)
        return job

    def cancel_running(self) -> None:
        """SIGKILL every running job (for shutdown); each ends ``cancelled``."""
        for job in list(self.jobs.values()):
            if job.command is not None:
                job.command.cancel()

    def close(self) -> None:
        """Stop the expiry timer and write everything still queued to the store."""
        if self._expiry is not None:
            self._loop.remove_timeout(self._expiry)
            self._expiry = None
        if self.store is not None:
            self.store.close()

    def _on_result(self, job: Job, pid: int, result: CommandResult) -> None:
        job.finish(result)
        log.info("job %s %s: pid %s status %s duration %.3fs program %s", job.id, job.state,
                 pid, job.status, job.duration or 0.0, job.args[0])
        self._finished[job.id] = job
        self._save(job)
        self._evict()

    def _save(self, job: Job) -> None:
        if self.store is not None:
            self.store.put(job.record())

    def _drop(self, job: Job, why: str) -> None:
        del self.jobs[job.id]
        del self._finished[job.id]
        if self.store is not None:
            self.store.delete(job.id)
        log.debug("job %s dropped (%s)", job.id, why)

    def _make_room(self) -> None:
        # One slot for the job about to start: drop the oldest finished job if we are full.
        while len(self.jobs) >= self.max_jobs and self._finished:
            self._drop(next(iter(self._finished.values())), "max-jobs")
        if len(self.jobs) >= self.max_jobs:
            raise TooManyRequests(
                f"all {self.max_jobs} job slots hold running jobs; try again later")

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

"""`Job`: one background command, its named states, its output so far, how it ended.

States, and every edge (all taken in `Job._transition`)::

    queued ──> running      a slot reached it and its command started
       │────> cancelled    DELETE /jobs/<id>, or shutdown, before it started
       │────> failed       its command could not start once a slot reached it
       └────> lost         the instance died before it started (found so in --state-dir)
    running ──> exited       the command ran to its end (any exit status)
        │────> timed_out    its deadline passed and its group was SIGKILLed
        │────> cancelled    DELETE /jobs/<id>, or the end of the shutdown grace, SIGKILLed it
        └────> lost         the instance died while it ran (found so in --state-dir)

A job's output is an `OutputLog` while it lives in memory; ``output`` is None once the job
store holds all of it (see `taskrunner.jobs.registry`). A job submitted with a
``callback_url`` carries a `CallbackOutcome` from the start (``pending``); its delivery is
`taskrunner.jobs.callbacks`' business, not a state of the job.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from taskrunner.errors import ServiceUnavailable, TaskRunnerError
from taskrunner.jobs.index import summary_args
from taskrunner.jobs.schema import Chunk, JobRecord
from taskrunner.process.engine import Command, CommandResult
from taskrunner.process.environment import CommandTrace
from taskrunner.process.launcher import Reservation
from taskrunner.process.output import OutputCursor, OutputLog


class JobState(enum.StrEnum):
    """The named states of a job."""

    QUEUED = "queued"
    RUNNING = "running"
    EXITED = "exited"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    FAILED = "failed"
    LOST = "lost"


_EDGES: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED,
                                JobState.LOST}),
    JobState.RUNNING: frozenset({JobState.EXITED, JobState.TIMED_OUT, JobState.CANCELLED,
                                 JobState.LOST}),
}


@dataclass
class CallbackOutcome:
    """Where a job's completion callback stands: ``pending`` until it ends ``delivered``,
    ``failed`` (every try failed, or the instance stopped first) or ``refused`` (its host
    was not on ``--callback-allow`` when it was due); ``error`` is the last try's failure."""

    status: str = "pending"
    attempts: int = 0
    error: str | None = None

    def trying(self) -> None:
        """A try starts (``attempts`` counts tries started, the one under way included)."""
        self.attempts += 1

    def tried(self, error: str | None, final: bool) -> None:
        """The try ended: it succeeded (``error`` None), or failed (for good if ``final``)."""
        self.error = error
        if error is None:
            self.status = "delivered"
        elif final:
            self.status = "failed"

    def refused(self, why: str) -> None:
        """Not sent at all: its host may not be called."""
        self.status, self.error = "refused", why

    def stopped(self, why: str) -> None:
        """Still pending when the instance stopped: failed."""
        self.status, self.error = "failed", why

    def to_json(self) -> dict[str, Any]:
        """``{"status", "attempts", "error"}``, as the job object and the store hold it."""
        return {"status": self.status, "attempts": self.attempts, "error": self.error}


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
                 created: float | None = None, caller: str | None = None,
                 callback_url: str | None = None, realm: str | None = None) -> None:
        self.id = job_id
        self.instance = instance
        self.caller = caller
        """The name of the caller (``--callers``) that submitted it; None without one."""
        self.realm = realm
        """The realm of that caller: with its name, the job's owner (`index.in_view`);
        None for a job stored before jobs had a realm."""
        self.args = args
        self.state = JobState.QUEUED
        self.created = time.time() if created is None else created
        self.finished: float | None = None
        self.status: int | None = None
        self.timed_out = False
        self.oom_killed = False
        self.duration: float | None = None
        self.truncated = {"stdout": False, "stderr": False}
        self.error: dict[str, str] | None = None
        self.callback_url = callback_url
        self.callback = None if callback_url is None else CallbackOutcome()
        self.timeout: float | None = None
        """The deadline it was given, in seconds (None: stored before it was kept)."""
        self.cwd: str | None = None
        self.env_names: list[str] | None = None
        """The names of the request's ``env``; its values are never kept."""
        self.action: str | None = None
        """The named action it runs (``--actions``); None for a plain argv job."""
        self.params: dict[str, Any] | None = None
        """That action's parameters, as checked."""
        self.usage: dict[str, Any] | None = None
        """What its command cost, once it ended (None if it never started)."""
        self.trace_id: str | None = None
        """The W3C trace id of the request that submitted it."""
        self.trace: CommandTrace | None = None
        """Its whole trace context, while this instance holds it (not stored): its
        callback carries it on."""
        self.output: OutputLog | None = OutputLog(limit)
        """None once the output lives only in the store."""
        self.command: Command | None = None
        self.reservation: Reservation | None = None
        """Until it starts (or is cancelled): its slot or place in the queue, and its
        caller's share, which its command holds once it runs."""
        self.flushed = OutputCursor()  # how much of the output the store was given
        self.seq = 0  # the next chunk's number in the store
        self._change: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.state}>"

    @property
    def done(self) -> bool:
        """True once the job has left ``queued`` and ``running`` for good."""
        return self.state not in (JobState.QUEUED, JobState.RUNNING)

    def on_output(self, stream: str, data: bytes) -> None:
        """The engine's listener: its command's `OutputLog` grew, so wake the streams."""
        self._notify()

    def changed(self) -> asyncio.Future[None]:
        """A future resolved at the next chunk of output or change of state."""
        if self._change is None or self._change.done():
            self._change = asyncio.get_running_loop().create_future()
        return self._change

    def unflushed(self) -> list[Chunk]:
        """The output not yet given to the store, numbered; it counts as given."""
        if self.output is None:
            return []
        chunks = []
        for stream, data in self.output.read(self.flushed):
            chunks.append((self.seq, stream, data))
            self.seq += 1
        return chunks

    def start(self, command: Command) -> None:
        """Its command started: from now on its output is the command's own log."""
        self.command = command
        self.output = command.output
        self._transition(JobState.RUNNING)

    def finish(self, result: CommandResult) -> None:
        """Record how the command ended and move to the state that says so."""
        self.status = result.status
        self.timed_out = result.timed_out
        self.oom_killed = result.oom_killed
        self.duration = result.duration
        self.truncated = {"stdout": result.stdout_truncated, "stderr": result.stderr_truncated}
        self.usage = None if result.usage is None else result.usage.to_json()
        self.command = None
        if result.timed_out:
            self._transition(JobState.TIMED_OUT)  # the deadline's SIGKILL came first
        elif result.cancelled:
            self._transition(JobState.CANCELLED)
        else:
            self._transition(JobState.EXITED)  # by itself, or a kill not sent through us

    def abandon(self, error: TaskRunnerError | None) -> None:
        """It never started: cancelled (no error, or the instance stopping), or failed."""
        if error is not None:
            self.error = {"error": error.code, "message": error.message}
        if error is None or isinstance(error, ServiceUnavailable):
            self._transition(JobState.CANCELLED)
        else:
            self._transition(JobState.FAILED)

    def mark_lost(self, last_alive: float | None) -> None:
        """Stored unfinished by an instance that died: lost, at its last sign of life."""
        self._transition(JobState.LOST, max(self.created, last_alive or self.created))

    def _transition(self, new: JobState, at: float | None = None) -> None:
        # The one place a job changes state; the edges are drawn in the module docstring.
        if new not in _EDGES.get(self.state, frozenset()):
            raise RuntimeError(f"job {self.id}: no transition {self.state} -> {new}")
        self.state = new
        if self.done:
            self.finished = time.time() if at is None else at
        self._notify()

    def _notify(self) -> None:
        if self._change is not None and not self._change.done():
            self._change.set_result(None)

    def to_json(self, output: OutputLog | None = None) -> dict[str, Any]:
        """The job object of the API; without ``output``, the summary of a listing: no stdout
        and stderr, and its args cut (`summary_args`), with ``args_truncated``."""
        body: dict[str, Any] = {
            "id": self.id,
            "instance": self.instance,
            "caller": self.caller,
            "state": str(self.state),
            "args": self.args,
        }
        if output is None:
            body["args"], body["args_truncated"] = summary_args(self.args)
        body["status"] = self.status
        if output is not None:
            body["stdout"] = output.text("stdout")
            body["stderr"] = output.text("stderr")
        body.update({
            "timed_out": self.timed_out,
            "oom_killed": self.oom_killed,
            "duration": None if self.duration is None else round(self.duration, 6),
            "stdout_truncated": self.truncated["stdout"],
            "stderr_truncated": self.truncated["stderr"],
            "created": _iso(self.created),
            "finished": _iso(self.finished),
            "error": self.error,
            "callback_url": self.callback_url,
            "callback": None if self.callback is None else self.callback.to_json(),
            "timeout": self.timeout,
            "cwd": self.cwd,
            "env_names": self.env_names,
            "action": self.action,
            "params": self.params,
            "usage": self.usage,
            "trace_id": self.trace_id,
        })
        return body

    def record(self) -> JobRecord:
        """The job as the store keeps it (its output goes in chunks)."""
        return JobRecord(
            id=self.id, instance=self.instance, state=str(self.state), args=self.args,
            status=self.status, timed_out=self.timed_out, oom_killed=self.oom_killed,
            duration=self.duration,
            stdout_truncated=self.truncated["stdout"], stderr_truncated=self.truncated["stderr"],
            created=self.created, finished=self.finished, error=self.error, caller=self.caller,
            callback_url=self.callback_url,
            callback=None if self.callback is None else self.callback.to_json(),
            realm=self.realm, timeout=self.timeout, cwd=self.cwd, env_names=self.env_names,
            action=self.action, params=self.params, usage=self.usage, trace_id=self.trace_id)

    @classmethod
    def from_record(cls, record: JobRecord, limit: int) -> Job:
        """A job as it was stored; its output stays in the store."""
        job = cls(record.id, record.instance, record.args, limit, created=record.created,
                  caller=record.caller, callback_url=record.callback_url, realm=record.realm)
        # Restored as stored, not transitioned: an unfinished one goes on to lost in restore().
        job.state = JobState(record.state)
        job.finished = record.finished
        job.status = record.status
        job.timed_out = record.timed_out
        job.oom_killed = record.oom_killed
        job.duration = record.duration
        job.truncated = {"stdout": record.stdout_truncated, "stderr": record.stderr_truncated}
        job.error = record.error
        if record.callback is not None:
            job.callback = CallbackOutcome(**record.callback)
        job.timeout, job.cwd, job.env_names = record.timeout, record.cwd, record.env_names
        job.action, job.params = record.action, record.params
        job.usage, job.trace_id = record.usage, record.trace_id
        job.output = None
        return job

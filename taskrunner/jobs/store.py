"""`JobStore`: an instance's jobs in the job index, written off the event loop, and the
index read back for the whole deployment.

The index is a `taskrunner.jobs.index.Backend`: SQLite under ``--state-dir`` or PostgreSQL
at ``--state-url``. Its tables (see `taskrunner.jobs.schema`): ``jobs``, one row per job;
``chunks``, its output as written, replayed in order so the interleaving of stdout and
stderr survives; ``instances``, each instance's ``heartbeat``: the last time it was known
alive, which becomes the ``finished`` time of its jobs found ``lost``, and the realm of its
callers, which its live siblings share (`open` refuses otherwise).

Writes never happen on the event loop. One writer thread takes everything queued and
writes it in two transactions:

1. ``create``: the rows of newly accepted jobs, before their commands start. Never
   retried: if it fails, each caller's future fails and the job is refused (503
   ``store_unavailable``), so nothing runs that the store does not know about. The futures
   of one transaction are settled in one call on their event loop.
2. everything else (later states, output chunks, deletions, the heartbeat), merged per job.
   If it fails (a full disk, the index's server down) it is kept and retried, merged with
   what comes next, until it is written: after ``retry_interval`` seconds, doubling up to
   ``retry_max``; then `on_written` is told which job records it wrote. While it fails,
   `healthy` is False and `write_failures` counts each failed attempt. One error is logged
   when an outage starts and one warning when it ends, not one per attempt.

Reads (`find`, `get`, `read_output`) are the backend's, on the event loop without blocking
it; they raise `StoreUnavailable` when the index cannot be read. `find` and `get` report the
unfinished jobs of an instance not heard of for ``lost_after`` seconds as ``lost``, but only
once this instance has itself been writing to the index for ``lost_after`` seconds: after an
outage of the index every heartbeat is old, and none says its instance died.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from taskrunner.errors import StoreError, StoreUnavailable
from taskrunner.jobs.index import DEFAULT_REALM, Backend, JobQuery, Pending, Sibling, present
from taskrunner.jobs.schema import Chunk, JobRecord

log = logging.getLogger("taskrunner.jobs")

T = TypeVar("T")
_Op = tuple[str, Any]
_GATHER = ("put", "delete", "heartbeat")  # what may wait a moment for more of its kind


class JobStore:
    """One instance's side of the job index: its writer thread and its reads."""

    def __init__(self, backend: Backend, instance: str, *, realm: str = DEFAULT_REALM,
                 listening: str = "", url: str | None = None,
                 batch_delay: float = 0.05, retry_interval: float = 1.0,
                 retry_max: float = 5.0, lost_after: float = 15.0) -> None:
        self.backend = backend
        self.instance = instance
        self.holder = f"{socket.gethostname()} pid {os.getpid()} {listening}".rstrip()
        """Who runs as ``instance``: ``<host> pid <pid> [<address:port>]`` (``listening``).
        Another process asking for the name while this one lives is refused."""
        self.url = url
        """Where the instances sharing the index reach this one (``--advertise-url``)."""
        self.realm = realm
        """The realm this instance's callers belong to; its live siblings must share it."""
        self.batch_delay = batch_delay
        self.retry_interval = retry_interval
        self.retry_max = retry_max
        self.lost_after = lost_after
        self.healthy = True
        """False while writes fail (since the last attempt that failed)."""
        self.write_failures = 0
        """Transactions that failed, since startup."""
        self.last_error: str | None = None
        self.on_write_failure: Callable[[], None] | None = None
        """Called (from the writer thread) after each failed write; e.g. a metric."""
        self.on_written: Callable[[list[JobRecord]], None] | None = None
        """Called (from the writer thread) with the job records each transaction wrote."""
        self._opened = False
        self._loaded: tuple[list[JobRecord], float | None] = ([], None)
        self._writing_since = time.monotonic()  # since when writes have succeeded
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def where(self) -> str:
        """The index, for messages: a path, or a URL without its password."""
        return self.backend.where

    # -- startup -----------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the index and take this instance's name in it, once;
        `StoreError` if the index cannot be used, or another live process holds the name
        (a name heard from within ``lost_after`` seconds, held by another host or address),
        or a live sibling serves another realm."""
        if self._opened:
            return
        opened = self.backend.open(self.instance)
        try:
            if (opened.holder is not None and self._held_elsewhere(opened.holder)
                    and opened.age is not None and opened.age < self.lost_after):
                raise StoreError(
                    f"instance name {self.instance!r} is in use in {self.where}: held by "
                    f"{opened.holder}, heard from {opened.age:.1f}s ago; give each instance "
                    "sharing a job index its own --instance")
            self.backend.claim(self.instance, self.holder, self.realm, self.url,
                               self._refuse_other_realm)
        except self.backend.errors as exc:
            self.backend.close()
            raise StoreError(f"cannot use {self.where}: {_one_line(exc)}") from None
        except StoreError:
            self.backend.close()
            raise
        self._loaded = (opened.records, opened.heartbeat)
        self._opened = True

    def _refuse_other_realm(self, siblings: list[Sibling]) -> None:
        # Instances sharing an index serve one realm: a caller's jobs must look the same
        # whichever instance answers. A sibling that stopped cleanly, went silent, or never
        # said its realm (a version before realms) is not asked.
        for sibling in siblings:
            if (sibling.realm is not None and sibling.realm != self.realm
                    and sibling.holder is not None and sibling.age < self.lost_after
                    and self._held_elsewhere(sibling.holder)):
                raise StoreError(
                    f"instance {sibling.name!r} of {self.where} serves realm "
                    f"{sibling.realm!r} (held by {sibling.holder}, heard from "
                    f"{sibling.age:.1f}s ago), this one realm {self.realm!r}: instances "
                    "sharing a job index serve one realm (the callers file's 'realm'; "
                    f"{DEFAULT_REALM!r} without --callers)")

    def _held_elsewhere(self, holder: str) -> bool:
        # Held by another process that may live: one of this host that is gone (a crash,
        # and a restart on another port) does not hold the name any more.
        if holder == self.holder:
            return False
        host, _, rest = holder.partition(" pid ")
        pid = rest.split(" ", 1)[0]
        if host != socket.gethostname() or not pid.isdigit():
            return True
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def load(self) -> list[JobRecord]:
        """This instance's stored jobs, oldest first, as `open` read them (the caller turns
        unfinished ones into ``lost``)."""
        assert self._opened, "open() first"
        records, self._loaded = self._loaded[0], ([], self._loaded[1])
        return records

    def last_heartbeat(self) -> float | None:
        """When this instance, in its previous run, last wrote its heartbeat (Unix time)."""
        assert self._opened, "open() first"
        return self._loaded[1]

    def start(self) -> None:
        """Start the writer thread."""
        self._thread = threading.Thread(target=self._run, name="taskrunner-job-store",
                                        daemon=True)
        self._thread.start()

    # -- writes (from the event loop; none blocks) --------------------------------------

    def create(self, record: JobRecord) -> asyncio.Future[None]:
        """Insert a new job's row (call on the event loop); the future fails with
        `StoreUnavailable` if it cannot be written."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put(("create", (record, future)))
        return future

    def put(self, job_id: str, record: JobRecord | None = None,
            chunks: list[Chunk] | None = None) -> None:
        """Write a job's new state and/or output chunks, retried until written."""
        self._queue.put(("put", (job_id, record, chunks or [])))

    def delete(self, job_id: str) -> None:
        """Delete the job ``job_id`` and its output soon."""
        self._queue.put(("delete", job_id))

    def heartbeat(self, now: float) -> None:
        """Record that the instance is alive at ``now`` (Unix time)."""
        self._queue.put(("heartbeat", now))

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until everything queued so far was tried; True if all of it is written."""
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._queue.put(("sync", done))
        try:
            return done.result(timeout)
        except concurrent.futures.TimeoutError:
            return False

    def close(self) -> None:
        """Try once more to write what is queued, stop the thread, give the name up,
        close the index."""
        if self._thread is not None:
            self._queue.put(("stop", None))
            self._thread.join(10.0)
            self._thread = None
        if self._opened:
            try:
                self.backend.release(self.instance, self.holder)
            except self.backend.errors as exc:
                log.warning("job store: could not give up the name %r in %s: %s",
                            self.instance, self.where, _one_line(exc))
            self.backend.close()
            self._opened = False

    # -- reads (on the event loop; none blocks) ------------------------------------------

    async def lost_owners(self) -> dict[str, float]:
        """The other instances not heard of for ``lost_after`` seconds, with their last
        heartbeat; none while this instance's own writes are younger than that."""
        if not self.healthy or time.monotonic() - self._writing_since < self.lost_after:
            return {}
        beats = await self._reading(self.backend.heartbeats())
        return {name: beat for name, (beat, age) in beats.items()
                if age > self.lost_after and name != self.instance}

    async def find(self, query: JobQuery) -> list[JobRecord]:
        """One page of the index's jobs, newest first, as the API shows them."""
        lost = await self.lost_owners()
        records = await self._reading(self.backend.find(query, lost))
        return [present(record, lost) for record in records]

    async def get(self, job_id: str) -> JobRecord | None:
        """The job ``job_id`` as the API shows it, whichever instance owns it."""
        record = await self._reading(self.backend.get(job_id))
        if record is None or record.instance == self.instance:
            return record
        return present(record, await self.lost_owners())

    async def url_of(self, instance: str) -> str | None:
        """The URL another instance advertised, while a process holds its name;
        `StoreUnavailable` if the index cannot be read."""
        return await self._reading(self.backend.instance_url(instance))

    async def read_output(self, job_id: str) -> list[tuple[str, bytes]]:
        """A job's stored output, in the order written; `StoreUnavailable` if unreadable."""
        return await self._reading(self.backend.output(job_id))

    async def close_reads(self) -> None:
        """Release what the reads hold; before `close`, on the event loop."""
        await self.backend.close_reads()

    async def _reading(self, read: Awaitable[T]) -> T:
        try:
            return await read
        except self.backend.errors as exc:
            raise StoreUnavailable(f"the job index cannot be read: {_one_line(exc)}") from None

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        pending = Pending()
        wait = self.retry_interval
        while True:
            try:
                ops = [self._queue.get(timeout=wait if pending else None)]
            except queue.Empty:
                ops = []  # time to retry what failed
            if ops and ops[0][0] in _GATHER:
                self._gather(ops)
            while True:
                try:
                    ops.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            creates = [value for kind, value in ops if kind == "create"]
            created = self._write_creates(creates) if creates else True
            for kind, value in ops:
                _merge(pending, kind, value)
            stop = any(kind == "stop" for kind, _ in ops)
            if pending and self._write(pending):
                written = pending.written()
                pending = Pending()
                if written and self.on_written is not None:
                    self.on_written(written)
            healthy = created and not pending
            if healthy and not self.healthy:
                log.warning("job store: writes to %s succeed again (%s failed attempts)",
                            self.where, self.write_failures)
                self._writing_since = time.monotonic()
            self.healthy = healthy
            wait = self.retry_interval if healthy else min(wait * 2, self.retry_max)
            for kind, value in ops:
                if kind == "sync":
                    value.set_result(not pending)
            if stop:
                if pending:
                    log.error("job store: %s changes could not be written to %s: %s",
                              len(pending.jobs), self.where, self.last_error)
                return

    def _gather(self, ops: list[_Op]) -> None:
        # Let a burst gather for up to batch_delay: one transaction for all of it, and a job
        # that ends meanwhile is written once, not as "running" and then again. A new job
        # (or a flush) ends the wait: its caller is waiting for the answer.
        deadline = time.monotonic() + self.batch_delay
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                ops.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                return
            if ops[-1][0] not in _GATHER:
                return

    def _write_creates(self, creates: list[tuple[JobRecord, asyncio.Future[None]]]) -> bool:
        error: StoreUnavailable | None = None
        try:
            self.backend.insert([record for record, _ in creates])
        except self.backend.errors as exc:
            self._failed(exc, f"{len(creates)} new jobs (refused)")
            error = StoreUnavailable(
                f"the job index cannot record the job ({_one_line(exc)}); nothing was started")
        futures = [future for _, future in creates]
        # One wake-up of the event loop for the whole transaction.
        futures[0].get_loop().call_soon_threadsafe(_settle, futures, error)
        return error is None

    def _write(self, pending: Pending) -> bool:
        try:
            self.backend.write(pending, self.instance)
        except self.backend.errors as exc:
            self._failed(exc, f"changes to {len(pending.jobs)} jobs")
            return False
        return True

    def _failed(self, exc: Exception, what: str) -> None:
        self.write_failures += 1
        self.last_error = _one_line(exc)
        if self.healthy:
            log.error("job store: writing %s to %s failed: %s; new jobs are refused and "
                      "other changes retried (every %s-%ss) until writes succeed", what,
                      self.where, self.last_error, self.retry_interval, self.retry_max)
        self.healthy = False
        if self.on_write_failure is not None:
            self.on_write_failure()


def _merge(pending: Pending, kind: str, value: Any) -> None:
    if kind == "put":
        job_id, record, chunks = value
        change = pending.change(job_id)
        if record is not None:
            change.record = record
        change.chunks += chunks
    elif kind == "delete":
        change = pending.change(value)
        change.deleted, change.record, change.chunks = True, None, []
    elif kind == "heartbeat":
        pending.heartbeat = value


def _settle(futures: list[asyncio.Future[None]], error: StoreUnavailable | None) -> None:
    for future in futures:
        if future.done():
            continue  # its caller went away
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__

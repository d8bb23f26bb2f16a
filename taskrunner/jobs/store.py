"""`JobStore`: the SQLite database of ``--state-dir``: jobs, their output, and a heartbeat.

The tables (see `taskrunner.jobs.schema`): ``jobs``, one row per job; ``chunks``, its output
as written, replayed in order so the interleaving of stdout and stderr survives; ``meta``,
the ``heartbeat``: the last time the instance was known alive, which becomes the
``finished`` time of the jobs found ``lost``.

Writes never happen on the event loop. One writer thread takes everything queued and
writes it in two transactions:

1. ``create``: the rows of newly accepted jobs, before their commands start. Never
   retried: if it fails, each caller's future fails and the job is refused (503
   ``store_unavailable``), so nothing runs that the store does not know about. The futures
   of one transaction are settled in one call on their event loop.
2. everything else (later states, output chunks, deletions, the heartbeat), merged per job.
   If it fails (a full disk, an unwritable file) it is kept and retried every
   ``retry_interval`` seconds, merged with what comes next, until it is written; then
   `on_written` is told which job records it wrote. While it fails, `healthy` is False and
   `write_failures` counts each failed attempt.

The database is in WAL mode with ``synchronous=NORMAL``: a commit does not wait for the
disk, and a crash of the instance (not of the machine) loses nothing committed. Output is
read back on a second connection in a reader thread (`JobStore.read_output`), as WAL allows
readers beside the writer.

`JobStore.open` turns a database that cannot be used into a one-line `StoreError`; a file
that is not a database, or is corrupt, is moved aside (``jobs.sqlite3.corrupt-<time>``) with
a warning and a new one is started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from taskrunner.errors import StoreError, StoreUnavailable
from taskrunner.jobs.schema import (
    COLUMNS,
    INSERT,
    INSERT_CHUNK,
    STREAMS,
    UPSERT,
    Chunk,
    JobRecord,
    ensure_schema,
)

log = logging.getLogger("taskrunner.jobs")

# Primary result codes (the low byte of sqlite_errorcode) that mean "this file is damaged".
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


@dataclass
class _Change:
    # What one job needs written; changes of one job merge into one.
    record: JobRecord | None = None
    chunks: list[Chunk] = field(default_factory=list)
    deleted: bool = False


@dataclass
class _Pending:
    jobs: dict[str, _Change] = field(default_factory=dict)
    heartbeat: float | None = None

    def __bool__(self) -> bool:
        return bool(self.jobs) or self.heartbeat is not None

    def change(self, job_id: str) -> _Change:
        return self.jobs.setdefault(job_id, _Change())


_Op = tuple[str, Any]
_GATHER = ("put", "delete", "heartbeat")  # what may wait a moment for more of its kind


class JobStore:
    """The ``jobs.sqlite3`` database in ``state_dir``, written by one background thread."""

    def __init__(self, state_dir: str, batch_delay: float = 0.05,
                 retry_interval: float = 1.0) -> None:
        self.state_dir = state_dir
        self.batch_delay = batch_delay
        self.retry_interval = retry_interval
        self.path = os.path.join(state_dir, "jobs.sqlite3")
        self.healthy = True
        """False while writes fail (since the last attempt that failed)."""
        self.write_failures = 0
        """Transactions that failed, since startup."""
        self.last_error: str | None = None
        self.on_write_failure: Callable[[], None] | None = None
        """Called (from the writer thread) after each failed write; e.g. a metric."""
        self.on_written: Callable[[list[JobRecord]], None] | None = None
        """Called (from the writer thread) with the job records each transaction wrote."""
        self._db: sqlite3.Connection | None = None
        self._loaded: tuple[list[JobRecord], float | None] = ([], None)
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_db: sqlite3.Connection | None = None

    # -- startup -----------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the database, once; `StoreError` if it cannot be used.

        A damaged file is moved aside with a warning and a new database started: the
        instance serves, and the old file is kept for whoever wants to look into it.
        """
        if self._db is not None:
            return
        try:
            os.makedirs(self.state_dir, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"--state-dir {self.state_dir}: {exc.strerror or exc}") from None
        if not os.access(self.state_dir, os.W_OK):  # SQLite would only say "unable to open"
            raise StoreError(f"--state-dir {self.state_dir} is not writable (a read-only "
                             "filesystem, or permissions)")
        try:
            self._db, self._loaded = self._connect()
        except sqlite3.DatabaseError as exc:
            if _primary(exc) not in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                raise StoreError(f"--state-dir: cannot use {self.path}: {exc}") from None
            aside = f"{self.path}.corrupt-{int(time.time())}"
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.path + suffix, aside + suffix)
            log.warning("job store: %s is damaged (%s); moved aside to %s, starting empty",
                        self.path, exc, aside)
            try:
                self._db, self._loaded = self._connect()
            except sqlite3.DatabaseError as again:
                raise StoreError(f"--state-dir: cannot use {self.path}: {again}") from None

    def _connect(self) -> tuple[sqlite3.Connection, tuple[list[JobRecord], float | None]]:
        # Open, bring the schema up to date, and read every job row and the heartbeat: any
        # damage to them shows here, at startup, where the file can still be moved aside.
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            with db:
                db.execute("BEGIN IMMEDIATE")
                ensure_schema(db)
            rows = db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM jobs ORDER BY created").fetchall()
            beat = db.execute("SELECT value FROM meta WHERE key = 'heartbeat'").fetchone()
        except BaseException:
            db.close()
            raise
        return db, ([JobRecord.from_row(row) for row in rows],
                    None if beat is None else float(beat[0]))

    def load(self) -> list[JobRecord]:
        """Every stored job, oldest first, as `open` read them (the caller turns unfinished
        ones into ``lost``)."""
        assert self._db is not None, "open() first"
        records, self._loaded = self._loaded[0], ([], self._loaded[1])
        return records

    def last_heartbeat(self) -> float | None:
        """When the instance of the previous run last wrote its heartbeat (Unix time)."""
        assert self._db is not None, "open() first"
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
        """Try once more to write what is queued, stop the threads, close the database."""
        if self._thread is not None:
            self._queue.put(("stop", None))
            self._thread.join(10.0)
            self._thread = None
        if self._reader is not None:
            self._reader.submit(self._close_reader).result(10.0)
            self._reader.shutdown()
            self._reader = None
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- reads -------------------------------------------------------------------------

    async def read_output(self, job_id: str) -> list[tuple[str, bytes]]:
        """A job's stored output, in the order written; `StoreUnavailable` if unreadable."""
        if self._reader is None:
            self._reader = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="taskrunner-job-store-read")
        return await asyncio.wrap_future(self._reader.submit(self._read_output, job_id))

    def _read_output(self, job_id: str) -> list[tuple[str, bytes]]:
        try:
            if self._reader_db is None:
                self._reader_db = sqlite3.connect(self.path, isolation_level=None)
            rows = self._reader_db.execute(
                "SELECT stream, data FROM chunks WHERE job = ? ORDER BY seq", (job_id,))
            return [(STREAMS[stream], bytes(data)) for stream, data in rows]
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the job store cannot be read: {exc}") from None

    def _close_reader(self) -> None:
        if self._reader_db is not None:
            self._reader_db.close()
            self._reader_db = None

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        pending = _Pending()
        while True:
            try:
                ops = [self._queue.get(timeout=self.retry_interval if pending else None)]
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
                written = [change.record for change in pending.jobs.values()
                           if change.record is not None]
                pending = _Pending()
                if written and self.on_written is not None:
                    self.on_written(written)
            if created and not pending and not self.healthy:
                log.warning("job store: writes to %s succeed again (%s failed attempts)",
                            self.path, self.write_failures)
            self.healthy = created and not pending
            for kind, value in ops:
                if kind == "sync":
                    value.set_result(not pending)
            if stop:
                if pending:
                    log.error("job store: %s changes could not be written to %s: %s",
                              len(pending.jobs), self.path, self.last_error)
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
        assert self._db is not None
        error: StoreUnavailable | None = None
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(INSERT, [record.row() for record, _ in creates])
        except sqlite3.Error as exc:
            self._failed(exc, f"{len(creates)} new jobs (refused)")
            error = StoreUnavailable(
                f"the job store cannot record the job ({exc}); nothing was started")
        futures = [future for _, future in creates]
        # One wake-up of the event loop for the whole transaction.
        futures[0].get_loop().call_soon_threadsafe(_settle, futures, error)
        return error is None

    def _write(self, pending: _Pending) -> bool:
        assert self._db is not None
        try:
            with self._db:
                self._db.execute("BEGIN")
                for job_id, change in pending.jobs.items():
                    if change.deleted:
                        self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                        self._db.execute("DELETE FROM chunks WHERE job = ?", (job_id,))
                        continue
                    if change.record is not None:
                        self._db.execute(UPSERT, change.record.row())
                    self._db.executemany(INSERT_CHUNK, [
                        (job_id, seq, STREAMS.index(stream), data)
                        for seq, stream, data in change.chunks])
                if pending.heartbeat is not None:
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES ('heartbeat', ?)",
                                     (pending.heartbeat,))
        except sqlite3.Error as exc:
            self._failed(exc, f"changes to {len(pending.jobs)} jobs")
            return False
        return True

    def _failed(self, exc: sqlite3.Error, what: str) -> None:
        self.write_failures += 1
        self.last_error = str(exc)
        if self.healthy:
            log.error("job store: writing %s to %s failed: %s; new jobs are refused and "
                      "other changes retried every %ss until writes succeed", what, self.path,
                      exc, self.retry_interval)
        self.healthy = False
        if self.on_write_failure is not None:
            self.on_write_failure()


def _merge(pending: _Pending, kind: str, value: Any) -> None:
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


def _primary(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF

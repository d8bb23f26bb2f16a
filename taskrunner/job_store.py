"""`JobStore`: the embedded SQLite database of ``--state-dir`` that lets jobs survive restarts.

A row is written when a job starts (state ``running``) and again when it ends, and deleted
when the job is evicted. On startup, rows still marked ``running`` belong to an instance
that died while they ran: the registry turns them into ``lost`` and writes them back.

Writes never happen on the event loop. `JobStore.put` and `JobStore.delete` only append to
a queue; one writer thread takes everything queued, writes it in one transaction and goes
back to waiting, so a burst of jobs costs one commit, not one per job. The database is in
WAL mode with ``synchronous=NORMAL``: a commit does not wait for the disk, and a crash of
the instance (not of the machine) loses nothing that was committed. The thread starts no
processes, so the engine's vfork-style spawning is unaffected.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("taskrunner.jobs")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    state TEXT NOT NULL,
    args TEXT NOT NULL,
    status INTEGER,
    stdout TEXT NOT NULL,
    stderr TEXT NOT NULL,
    timed_out INTEGER NOT NULL,
    duration REAL,
    stdout_truncated INTEGER NOT NULL,
    stderr_truncated INTEGER NOT NULL,
    created REAL NOT NULL,
    finished REAL
)
"""

_COLUMNS = ("id", "instance", "state", "args", "status", "stdout", "stderr", "timed_out",
            "duration", "stdout_truncated", "stderr_truncated", "created", "finished")

_UPSERT = (f"INSERT OR REPLACE INTO jobs ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in _COLUMNS)})")


@dataclass(frozen=True)
class JobRecord:
    """One job as stored: what `JobStore.load` returns and `JobStore.put` takes."""

    id: str
    instance: str
    state: str
    args: list[str]
    status: int | None
    stdout: str
    stderr: str
    timed_out: bool
    duration: float | None
    stdout_truncated: bool
    stderr_truncated: bool
    created: float
    finished: float | None

    def row(self) -> tuple[Any, ...]:
        """The record as a row of the ``jobs`` table."""
        return (self.id, self.instance, self.state, json.dumps(self.args), self.status,
                self.stdout, self.stderr, int(self.timed_out), self.duration,
                int(self.stdout_truncated), int(self.stderr_truncated), self.created,
                self.finished)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> JobRecord:
        """A record from a row of the ``jobs`` table."""
        values = dict(zip(_COLUMNS, row, strict=True))
        values["args"] = json.loads(values["args"])
        for name in ("timed_out", "stdout_truncated", "stderr_truncated"):
            values[name] = bool(values[name])
        return cls(**values)


_Op = tuple[str, Any]  # ("put", JobRecord) | ("delete", id) | ("sync", Event) | ("stop", None)


class JobStore:
    """The ``jobs.sqlite3`` database in ``state_dir``, written by one background thread."""

    def __init__(self, state_dir: str, batch_delay: float = 0.05) -> None:
        self.batch_delay = batch_delay
        os.makedirs(state_dir, exist_ok=True)
        self.path = os.path.join(state_dir, "jobs.sqlite3")
        import sqlite3  # here, not at the top: an instance without --state-dir never loads it

        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def load(self) -> list[JobRecord]:
        """Every stored job, oldest first (the caller turns ``running`` ones into ``lost``).

        Call before `start`: it runs on the caller's thread.
        """
        rows = self._db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY created").fetchall()
        return [JobRecord.from_row(row) for row in rows]

    def start(self) -> None:
        """Start the writer thread."""
        self._thread = threading.Thread(target=self._run, name="taskrunner-job-store",
                                        daemon=True)
        self._thread.start()

    def put(self, record: JobRecord) -> None:
        """Insert or replace ``record`` soon (never blocks)."""
        self._queue.put(("put", record))

    def delete(self, job_id: str) -> None:
        """Delete the job ``job_id`` soon (never blocks)."""
        self._queue.put(("delete", job_id))

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until everything queued so far is written; for shutdown and tests."""
        done = threading.Event()
        self._queue.put(("sync", done))
        return done.wait(timeout)

    def close(self) -> None:
        """Write what is queued, stop the thread, close the database."""
        if self._thread is not None:
            self._queue.put(("stop", None))
            self._thread.join(10.0)
            self._thread = None
        self._db.close()

    def _run(self) -> None:
        while True:
            ops = [self._queue.get()]
            if ops[0][0] in ("put", "delete"):
                # Let a burst gather: one transaction for all of it, and a job that ended
                # meanwhile is written once, not as "running" and then again.
                time.sleep(self.batch_delay)
            while True:
                try:
                    ops.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = self._write(ops)
            for kind, value in ops:
                if kind == "sync":
                    value.set()
            if stop:
                return

    def _write(self, ops: list[_Op]) -> bool:
        latest: dict[str, JobRecord | None] = {}  # by id, the last change asked for
        for kind, value in ops:
            if kind == "put":
                latest.pop(value.id, None)
                latest[value.id] = value
            elif kind == "delete":
                latest.pop(value, None)
                latest[value] = None
        puts = [record.row() for record in latest.values() if record is not None]
        deletes = [(job_id,) for job_id, record in latest.items() if record is None]
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(_UPSERT, puts)
                self._db.executemany("DELETE FROM jobs WHERE id = ?", deletes)
        except self._db.Error:  # sqlite3.Error, as the connection names it
            log.exception("job store: writing %s changes to %s failed", len(latest), self.path)
        return any(kind == "stop" for kind, _ in ops)

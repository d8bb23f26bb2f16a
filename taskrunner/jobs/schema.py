"""The job store's schema: its tables, `JobRecord` (one row of ``jobs``), and upgrades.

Version 4 (``PRAGMA user_version`` in SQLite; the PostgreSQL backend has the same tables):
``jobs`` holds one row per job without its output, with the instance that owns it;
``chunks`` holds the output as written, ``(job, seq, stream, data)``, replayed in ``seq``
order; ``instances`` holds each instance's ``heartbeat``, so that the instances sharing
one index tell a sibling that died from one that lives, and its ``holder``, so that two
live processes never run under one name. Version 1 kept stdout and stderr as
text columns of ``jobs``; `ensure_schema` moves them into chunks. Version 3 added the
columns of `ADDED_COLUMNS` (``oom_killed``; the caller of ``--callers`` that submitted the
job; its callback); `ensure_schema` adds whichever a store lacks, so a store of any earlier
version opens with its rows as they were (``oom_killed`` false, the others NULL). Version
4 moved the one heartbeat of the ``meta`` table into ``instances``, for the instances of
the rows, and dropped ``meta``. `schema` writes the tables for SQLite or PostgreSQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite3

STREAMS = ("stdout", "stderr")

SCHEMA_VERSION = 4
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    state TEXT NOT NULL,
    args TEXT NOT NULL,
    status INTEGER,
    timed_out INTEGER NOT NULL,
    oom_killed INTEGER NOT NULL DEFAULT 0,
    duration {real},
    stdout_truncated INTEGER NOT NULL,
    stderr_truncated INTEGER NOT NULL,
    created {real} NOT NULL,
    finished {real},
    error TEXT,
    caller TEXT,
    callback_url TEXT,
    callback TEXT
);
CREATE TABLE IF NOT EXISTS chunks (
    job TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (job, seq)
){without_rowid};
CREATE TABLE IF NOT EXISTS instances (
    name TEXT PRIMARY KEY,
    heartbeat {real} NOT NULL,
    holder TEXT
){without_rowid};
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created, id);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created, id);
CREATE INDEX IF NOT EXISTS jobs_by_instance ON jobs (instance, created, id)
"""

_DIALECTS = {
    "sqlite": {"real": "REAL", "blob": "BLOB", "without_rowid": " WITHOUT ROWID"},
    "postgresql": {"real": "DOUBLE PRECISION", "blob": "BYTEA", "without_rowid": ""},
}


def schema(dialect: str) -> list[str]:
    """The statements that create the index's tables, in ``sqlite`` or ``postgresql``."""
    return [statement.strip() for statement in _SCHEMA.format(**_DIALECTS[dialect]).split(";")]

COLUMNS = ("id", "instance", "state", "args", "status", "timed_out", "oom_killed", "duration",
            "stdout_truncated", "stderr_truncated", "created", "finished", "error",
            "caller", "callback_url", "callback")

ADDED_COLUMNS = {"oom_killed": "INTEGER NOT NULL DEFAULT 0", "caller": "TEXT",
                 "callback_url": "TEXT", "callback": "TEXT"}
"""Columns added to ``jobs`` after version 2, with their types; in older rows, the default."""

INSERT = (f"INSERT INTO jobs ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in COLUMNS)})")
UPSERT = INSERT.replace("INSERT", "INSERT OR REPLACE", 1)
INSERT_CHUNK = "INSERT OR REPLACE INTO chunks (job, seq, stream, data) VALUES (?, ?, ?, ?)"


Chunk = tuple[int, str, bytes]
"""One piece of output as stored: (sequence number within the job, stream, bytes)."""


@dataclass(frozen=True)
class JobRecord:
    """One job as stored (its output is in chunks): what `load` returns, `put` takes."""

    id: str
    instance: str
    state: str
    args: list[str]
    status: int | None
    timed_out: bool
    duration: float | None
    stdout_truncated: bool
    stderr_truncated: bool
    created: float
    finished: float | None
    error: dict[str, str] | None = None
    oom_killed: bool = False
    caller: str | None = None
    callback_url: str | None = None
    callback: dict[str, Any] | None = None
    """The callback's outcome: ``{"status", "attempts", "error"}``."""

    def row(self) -> tuple[Any, ...]:
        """The record as a row of the ``jobs`` table."""
        return (self.id, self.instance, self.state, json.dumps(self.args), self.status,
                int(self.timed_out), int(self.oom_killed), self.duration,
                int(self.stdout_truncated), int(self.stderr_truncated), self.created,
                self.finished,
                None if self.error is None else json.dumps(self.error), self.caller,
                self.callback_url, None if self.callback is None else json.dumps(self.callback))

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> JobRecord:
        """A record from a row of the ``jobs`` table."""
        values = dict(zip(COLUMNS, row, strict=True))
        values["args"] = json.loads(values["args"])
        for name in ("error", "callback"):
            values[name] = None if values[name] is None else json.loads(values[name])
        for name in ("timed_out", "oom_killed", "stdout_truncated", "stderr_truncated"):
            values[name] = bool(values[name])
        return cls(**values)


def ensure_schema(db: sqlite3.Connection) -> None:
    """Create or upgrade the tables, inside the caller's transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version < SCHEMA_VERSION:
        _migrate(db)
        _add_columns(db)
    for statement in schema("sqlite"):
        db.execute(statement)
    if version < 4:
        _move_heartbeat(db)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _move_heartbeat(db: sqlite3.Connection) -> None:
    # Up to version 3 a store had one instance and one heartbeat, in meta.
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
        return
    beat = db.execute("SELECT value FROM meta WHERE key = 'heartbeat'").fetchone()
    if beat is not None:
        db.execute("INSERT OR REPLACE INTO instances (name, heartbeat) "
                   "SELECT DISTINCT instance, ? FROM jobs",
                   (float(beat[0]),))
    db.execute("DROP TABLE meta")


def _migrate(db: sqlite3.Connection) -> None:
    # Version 1 kept each job's stdout and stderr as text columns of ``jobs``: move them into
    # chunks (stdout first; the interleaving was not recorded then).
    columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    if "stdout" not in columns:
        return
    db.execute("ALTER TABLE jobs RENAME TO jobs_v1")
    for statement in schema("sqlite"):
        db.execute(statement)
    kept = ", ".join(name for name in COLUMNS if name in columns)
    db.execute(f"INSERT INTO jobs ({kept}) SELECT {kept} FROM jobs_v1")
    for seq, stream in enumerate(STREAMS):
        db.execute(f"INSERT INTO chunks SELECT id, {seq}, {seq}, CAST({stream} AS BLOB) "
                   f"FROM jobs_v1 WHERE {stream} != ''")
    db.execute("DROP TABLE jobs_v1")


def _add_columns(db: sqlite3.Connection) -> None:
    # A version 2 store: its rows stay, with the added columns' defaults.
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    if not columns:
        return  # a new store: SCHEMA creates the table whole
    for name, kind in ADDED_COLUMNS.items():
        if name not in columns:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

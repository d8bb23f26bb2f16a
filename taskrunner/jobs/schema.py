"""The job store's schema: its tables, `JobRecord` (one row of ``jobs``), and upgrades.

Version 5 (``PRAGMA user_version`` in SQLite, the ``taskrunner_schema`` table in PostgreSQL;
both have the same tables):
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
the rows, and dropped ``meta``. Version 5 added ``realm`` to ``jobs`` (a job's owner is its
realm and its caller: the callers file's namespace, so that a caller of another file that
happens to share a name owns nothing) and to ``instances`` (the realm each instance serves,
so that instances sharing an index and disagreeing on it refuse to start); rows stored
before it have no realm (NULL). Version 6 added what a job's page and its accounting show:
``timeout``, ``cwd`` and ``env_names`` (the names of the request's environment variables,
never their values) as submitted; ``action`` and ``params`` (the named action it ran, and
its parameters' values); ``usage`` (what the command cost: CPU, memory, queue wait) and
``trace_id`` (the W3C trace it belongs to); and ``url`` to ``instances`` (where its siblings
reach each instance, to forward a request for a job it runs). `schema` writes the tables
for SQLite or PostgreSQL; `ensure_schema` and `ensure_postgresql_schema` upgrade an older
index and refuse a newer one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from taskrunner.errors import StoreError

if TYPE_CHECKING:
    import sqlite3

STREAMS = ("stdout", "stderr")

SCHEMA_VERSION = 6
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
    callback TEXT,
    realm TEXT,
    timeout {real},
    cwd TEXT,
    env_names TEXT,
    action TEXT,
    params TEXT,
    usage TEXT,
    trace_id TEXT
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
    holder TEXT,
    realm TEXT,
    url TEXT
){without_rowid};
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created, id);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created, id);
CREATE INDEX IF NOT EXISTS jobs_by_instance ON jobs (instance, created, id);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (realm, caller, created, id)
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
            "caller", "callback_url", "callback", "realm", "timeout", "cwd", "env_names",
            "action", "params", "usage", "trace_id")

ADDED_COLUMNS = {
    "jobs": {"oom_killed": "INTEGER NOT NULL DEFAULT 0", "caller": "TEXT",
             "callback_url": "TEXT", "callback": "TEXT", "realm": "TEXT",
             "timeout": "{real}", "cwd": "TEXT", "env_names": "TEXT", "action": "TEXT",
             "params": "TEXT", "usage": "TEXT", "trace_id": "TEXT"},
    "instances": {"realm": "TEXT", "url": "TEXT"},
}
"""Columns added to a table after it first appeared (``jobs``: version 2; ``instances``:
version 4), with their types (``{real}`` per dialect); in older rows, the default (NULL)."""

_JSON_COLUMNS = ("error", "callback", "env_names", "params", "usage")

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
    realm: str | None = None
    """The realm of the caller that submitted it; None for a job stored before version 5."""
    timeout: float | None = None
    """The deadline it was given, in seconds; None for a job stored before version 6 (and
    so for the fields below)."""
    cwd: str | None = None
    env_names: list[str] | None = None
    """The names of the request's ``env`` (its values are never stored)."""
    action: str | None = None
    """The named action it ran (``--actions``); None for a plain argv job."""
    params: dict[str, Any] | None = None
    """That action's parameters, as checked."""
    usage: dict[str, Any] | None = None
    """What its command cost (``cpu_user``, ``cpu_system``, ``max_rss``, ``queued``, ...)."""
    trace_id: str | None = None
    """The W3C trace id of the request that submitted it."""

    def row(self) -> tuple[Any, ...]:
        """The record as a row of the ``jobs`` table."""
        return (self.id, self.instance, self.state, json.dumps(self.args), self.status,
                int(self.timed_out), int(self.oom_killed), self.duration,
                int(self.stdout_truncated), int(self.stderr_truncated), self.created,
                self.finished,
                _dumps(self.error), self.caller,
                self.callback_url, _dumps(self.callback), self.realm, self.timeout, self.cwd,
                _dumps(self.env_names), self.action, _dumps(self.params), _dumps(self.usage),
                self.trace_id)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> JobRecord:
        """A record from a row of the ``jobs`` table."""
        values = dict(zip(COLUMNS, row, strict=True))
        values["args"] = json.loads(values["args"])
        for name in _JSON_COLUMNS:
            values[name] = None if values[name] is None else json.loads(values[name])
        for name in ("timed_out", "oom_killed", "stdout_truncated", "stderr_truncated"):
            values[name] = bool(values[name])
        return cls(**values)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def ensure_schema(db: sqlite3.Connection, where: str) -> None:
    """Create or upgrade the tables, inside the caller's transaction; `StoreError` (one
    line, naming ``where``) for an index of a newer version than this code knows."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    _refuse_newer(version, where)
    if version < SCHEMA_VERSION:
        _migrate(db)
        _add_columns(db)
    for statement in schema("sqlite"):
        db.execute(statement)
    if version < 4:
        _move_heartbeat(db)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class Connection(Protocol):
    """What `ensure_postgresql_schema` needs of a psycopg connection."""

    def execute(self, query: Any, params: Any = ...) -> Any: ...


def ensure_postgresql_schema(db: Connection, where: str) -> None:
    """Create or upgrade the tables in PostgreSQL, inside the caller's transaction (which
    holds the schema lock); `StoreError` for an index newer than this code knows.

    Up to version 4 a PostgreSQL index recorded no version: one with a ``jobs`` table and
    no ``taskrunner_schema`` is a version 4 index.
    """
    found = db.execute("SELECT to_regclass('taskrunner_schema') IS NOT NULL, "
                       "to_regclass('jobs') IS NOT NULL").fetchone()
    if found[0]:
        version = db.execute("SELECT max(version) FROM taskrunner_schema").fetchone()[0] or 0
    else:
        version = 4 if found[1] else SCHEMA_VERSION
    _refuse_newer(version, where)
    if version < SCHEMA_VERSION:
        for table, columns in ADDED_COLUMNS.items():
            if db.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]:
                for name, kind in columns.items():
                    kind = kind.format(**_DIALECTS["postgresql"])
                    db.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {kind}")
    for statement in schema("postgresql"):
        db.execute(statement)
    db.execute("CREATE TABLE IF NOT EXISTS taskrunner_schema (version INTEGER NOT NULL)")
    if version != SCHEMA_VERSION or not found[0]:
        db.execute("DELETE FROM taskrunner_schema")
        db.execute("INSERT INTO taskrunner_schema (version) VALUES (%s)", (SCHEMA_VERSION,))


def _refuse_newer(version: int, where: str) -> None:
    # An older instance would write rows the newer one misreads (no realm: no owner), and
    # SQLite's user_version would be turned back: refused, before anything is written.
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the job index {where} has schema version {version}, newer than this "
            f"taskrunner knows ({SCHEMA_VERSION}): run the newer taskrunner here too, or give "
            "this instance an index of its own")


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
    # An older store: its rows stay, with the added columns' defaults. A table the store
    # lacks (a new store, instances before version 4) is created whole by SCHEMA.
    for table, added in ADDED_COLUMNS.items():
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not columns:
            continue
        for name, kind in added.items():
            if name not in columns:
                kind = kind.format(**_DIALECTS["sqlite"])
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

"""The job store's schema: its tables, `JobRecord` (one row of ``jobs``), and upgrades.

Version 3 (``PRAGMA user_version``): ``jobs`` holds one row per job without its output;
``chunks`` holds the output as written, ``(job, seq, stream, data)``, replayed in ``seq``
order; ``meta`` holds the ``heartbeat``. Version 2 had no ``oom_killed`` column (added,
false); version 1 kept stdout and stderr as text columns of ``jobs``; `ensure_schema`
moves them into chunks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite3

STREAMS = ("stdout", "stderr")

SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    state TEXT NOT NULL,
    args TEXT NOT NULL,
    status INTEGER,
    timed_out INTEGER NOT NULL,
    oom_killed INTEGER NOT NULL DEFAULT 0,
    duration REAL,
    stdout_truncated INTEGER NOT NULL,
    stderr_truncated INTEGER NOT NULL,
    created REAL NOT NULL,
    finished REAL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS chunks (
    job TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""

COLUMNS = ("id", "instance", "state", "args", "status", "timed_out", "oom_killed", "duration",
            "stdout_truncated", "stderr_truncated", "created", "finished", "error")

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

    def row(self) -> tuple[Any, ...]:
        """The record as a row of the ``jobs`` table."""
        return (self.id, self.instance, self.state, json.dumps(self.args), self.status,
                int(self.timed_out), int(self.oom_killed), self.duration,
                int(self.stdout_truncated), int(self.stderr_truncated), self.created,
                self.finished,
                None if self.error is None else json.dumps(self.error))

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> JobRecord:
        """A record from a row of the ``jobs`` table."""
        values = dict(zip(COLUMNS, row, strict=True))
        values["args"] = json.loads(values["args"])
        values["error"] = None if values["error"] is None else json.loads(values["error"])
        for name in ("timed_out", "oom_killed", "stdout_truncated", "stderr_truncated"):
            values[name] = bool(values[name])
        return cls(**values)


def ensure_schema(db: sqlite3.Connection) -> None:
    """Create or upgrade the tables, inside the caller's transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version < SCHEMA_VERSION:
        _migrate(db)
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate(db: sqlite3.Connection) -> None:
    columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    if columns and "stdout" not in columns and "oom_killed" not in columns:
        # Version 2: no job of it was killed by a memory limit it could not have had.
        db.execute("ALTER TABLE jobs ADD COLUMN oom_killed INTEGER NOT NULL DEFAULT 0")
    # Version 1 kept each job's stdout and stderr as text columns of ``jobs``: move them into
    # chunks (stdout first; the interleaving was not recorded then).
    columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    if "stdout" not in columns:
        return
    db.execute("ALTER TABLE jobs RENAME TO jobs_v1")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    kept = ", ".join(name for name in COLUMNS if name not in ("error", "oom_killed"))
    db.execute(f"INSERT INTO jobs ({kept}) SELECT {kept} FROM jobs_v1")
    for seq, stream in enumerate(STREAMS):
        db.execute(f"INSERT INTO chunks SELECT id, {seq}, {seq}, CAST({stream} AS BLOB) "
                   f"FROM jobs_v1 WHERE {stream} != ''")
    db.execute("DROP TABLE jobs_v1")

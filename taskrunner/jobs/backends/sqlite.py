"""`SQLiteIndex`: the job index in ``<state-dir>/jobs.sqlite3``, shared by the instances of
one host.

WAL mode with ``synchronous=NORMAL``: a commit does not wait for the disk, and a crash of
an instance (not of the machine) loses nothing committed; readers read beside the writers.
Each instance writes from one thread; instances that write at the same moment wait for each
other up to ``busy_timeout``. Reads run in a reader thread of their own, on a second
connection, so the event loop never waits for the file.

`open` turns a database that cannot be used into a one-line `StoreError`; a file that is not
a database, or is corrupt, is moved aside (``jobs.sqlite3.corrupt-<time>``) with a warning
and a new one is started.

The file holds every caller's commands and outputs, and commands run on the same host
(``--user nobody`` included): a state directory taskrunner makes is 0700 and the database
is made 0600 before SQLite opens it (SQLite gives ``-wal`` and ``-shm`` the database's
mode). An existing directory that another user owns, or that group or others may read or
write, is refused rather than changed: it may be shared (``/var/tmp``). The one exception
is what an earlier version made (0755, ``jobs.sqlite3`` in it, writable by this user only):
it is made 0700, with a warning.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from taskrunner.errors import StoreError
from taskrunner.jobs.index import (
    JobQuery,
    Opened,
    Pending,
    Sibling,
    listed_record,
    listing_sql,
)
from taskrunner.jobs.schema import (
    COLUMNS,
    INSERT,
    INSERT_CHUNK,
    STREAMS,
    UPSERT,
    JobRecord,
    ensure_schema,
)

log = logging.getLogger("taskrunner.jobs")

# Primary result codes (the low byte of sqlite_errorcode) that mean "this file is damaged".
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_BUSY_TIMEOUT_MS = 5000  # a sibling instance's transaction is a few ms; a stuck one, an error
_NOW = "(julianday('now') - 2440587.5) * 86400.0"  # Unix time, by SQLite

T = TypeVar("T")


class SQLiteIndex:
    """The ``jobs.sqlite3`` database in ``state_dir``."""

    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, "jobs.sqlite3")
        self.where = self.path
        self._db: sqlite3.Connection | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_db: sqlite3.Connection | None = None

    # -- the writer thread's side --------------------------------------------------------

    def open(self, instance: str) -> Opened:
        """Open (or create) the database; return what it holds of ``instance``."""
        try:
            _private_directory(self.state_dir)
        except OSError as exc:
            raise StoreError(f"--state-dir {self.state_dir}: {exc.strerror or exc}") from None
        if not os.access(self.state_dir, os.W_OK):  # SQLite would only say "unable to open"
            raise StoreError(f"--state-dir {self.state_dir} is not writable (a read-only "
                             "filesystem, or permissions)")
        try:
            return self._connect_patiently(instance)
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
                return self._connect_patiently(instance)
            except sqlite3.DatabaseError as again:
                raise StoreError(f"--state-dir: cannot use {self.path}: {again}") from None

    def _connect_patiently(self, instance: str) -> Opened:
        # Instances of one host start together: the first makes the file and turns it to
        # WAL, which takes it whole for a moment, and SQLite answers "locked" at once in
        # some of those moments instead of calling its busy handler. So try again a while.
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return self._connect(instance)
            except sqlite3.OperationalError as exc:
                if _primary(exc) not in (_SQLITE_BUSY, _SQLITE_LOCKED) or \
                        time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _connect(self, instance: str) -> Opened:
        # Open, bring the schema up to date, and read this instance's rows and heartbeat:
        # any damage to them shows here, at startup, where the file can still be moved aside.
        # Made 0600 first (a no-op if it exists): SQLite would make it 0644.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600))
        db = _connection(self.path)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                db.execute("BEGIN IMMEDIATE")
                ensure_schema(db, self.path)
            rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE instance = ? "
                              "ORDER BY created", (instance,)).fetchall()
            beat = db.execute(f"SELECT heartbeat, holder, {_NOW} - heartbeat FROM instances "
                              "WHERE name = ?", (instance,)).fetchone()
        except BaseException:
            db.close()
            raise
        self._db = db
        return Opened([JobRecord.from_row(row) for row in rows], *(beat or (None, None, None)))

    def claim(self, instance: str, holder: str, realm: str, url: str | None,
              check: Callable[[list[Sibling]], None]) -> None:
        """Unless ``check`` refuses the other instances, write ``instance``'s heartbeat now,
        its holder, realm and URL (one transaction: BEGIN IMMEDIATE keeps other claims
        out)."""
        assert self._db is not None
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            check([Sibling(*row) for row in self._db.execute(
                f"SELECT name, realm, holder, {_NOW} - heartbeat FROM instances "
                "WHERE name != ?", (instance,))])
            self._db.execute("INSERT OR REPLACE INTO instances (name, heartbeat, holder, realm, "
                             "url) VALUES (?, ?, ?, ?, ?)",
                             (instance, time.time(), holder, realm, url))

    def release(self, instance: str, holder: str) -> None:
        """Give the name up, if this holder still holds it."""
        assert self._db is not None
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE instances SET holder = NULL, url = NULL "
                             "WHERE name = ? AND holder = ?", (instance, holder))

    def insert(self, records: list[JobRecord]) -> None:
        """Insert new jobs' rows, in one transaction."""
        assert self._db is not None
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(INSERT, [record.row() for record in records])

    def write(self, pending: Pending, instance: str) -> None:
        """Write everything pending and the heartbeat, in one transaction."""
        assert self._db is not None
        db = self._db
        with db:
            db.execute("BEGIN IMMEDIATE")
            for job_id, change in pending.jobs.items():
                if change.deleted:
                    db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                    db.execute("DELETE FROM chunks WHERE job = ?", (job_id,))
                    continue
                if change.record is not None:
                    db.execute(UPSERT, change.record.row())
                db.executemany(INSERT_CHUNK, [
                    (job_id, seq, STREAMS.index(stream), data)
                    for seq, stream, data in change.chunks])
            if pending.heartbeat is not None:
                db.execute("INSERT INTO instances (name, heartbeat) VALUES (?, ?) ON CONFLICT "
                           "(name) DO UPDATE SET heartbeat = excluded.heartbeat",
                           (instance, pending.heartbeat))

    def close(self) -> None:
        """Close the writer's connection, and the reader's if `close_reads` did not."""
        self._stop_reader()
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- reads, on the reader thread -----------------------------------------------------

    async def heartbeats(self) -> dict[str, tuple[float, float]]:
        """Each instance's last heartbeat and its age in seconds."""
        rows = await self._read(lambda db: db.execute(
            f"SELECT name, heartbeat, {_NOW} - heartbeat FROM instances").fetchall())
        return {name: (beat, age) for name, beat, age in rows}

    async def find(self, query: JobQuery, lost_owners: Mapping[str, float]) -> list[JobRecord]:
        """One listing page."""
        sql, params = listing_sql(query, lost_owners, "?")
        rows = await self._read(lambda db: db.execute(sql, params).fetchall())
        return [listed_record(row) for row in rows]

    async def get(self, job_id: str) -> JobRecord | None:
        """One job's row."""
        row = await self._read(lambda db: db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone())
        return None if row is None else JobRecord.from_row(row)

    async def instance_url(self, instance: str) -> str | None:
        """The URL ``instance`` advertised, while a process holds its name."""
        row = await self._read(lambda db: db.execute(
            "SELECT url FROM instances WHERE name = ? AND holder IS NOT NULL",
            (instance,)).fetchone())
        return None if row is None else row[0]

    async def output(self, job_id: str) -> list[tuple[str, bytes]]:
        """One job's stored output, in the order written."""
        rows = await self._read(lambda db: db.execute(
            "SELECT stream, data FROM chunks WHERE job = ? ORDER BY seq", (job_id,)).fetchall())
        return [(STREAMS[stream], bytes(data)) for stream, data in rows]

    async def close_reads(self) -> None:
        """Stop the reader thread and close its connection."""
        self._stop_reader()

    def _stop_reader(self) -> None:
        if self._reader is not None:
            self._reader.submit(self._close_reader).result(10.0)
            self._reader.shutdown()
            self._reader = None

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None:
            self._reader = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="taskrunner-job-store-read")
        return await asyncio.wrap_future(self._reader.submit(self._on_reader, work))

    def _on_reader(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader_db is None:
            self._reader_db = _connection(self.path)
        return work(self._reader_db)

    def _close_reader(self) -> None:
        if self._reader_db is not None:
            self._reader_db.close()
            self._reader_db = None


def _connection(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _private_directory(path: str) -> None:
    """Make ``path`` 0700 (its missing parents as usual); `StoreError` if it exists and is
    not this user's alone."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise StoreError(f"--state-dir {path}: Not a directory")
    if info.st_uid != os.geteuid():
        raise StoreError(f"--state-dir {path} belongs to uid {info.st_uid}, not to this "
                         f"service (uid {os.geteuid()}): the job index holds every caller's "
                         "commands and outputs; give it a directory of its own (a missing "
                         "one is made 0700)")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o066 and not mode & 0o7022 and os.path.isfile(os.path.join(path, "jobs.sqlite3")):
        os.chmod(path, 0o700)  # an earlier version's own; nobody else may write there
        log.warning("--state-dir %s: readable by others (mode %04o), as earlier versions made "
                    "it; made 0700", path, mode)
        return
    if mode & 0o066:
        raise StoreError(f"--state-dir {path} is readable or writable by others (mode "
                         f"{mode:04o}): the job index holds every "
                         "caller's commands and outputs; give it a directory of its own (a "
                         f"missing one is made 0700), or chmod 700 {path}")


def _primary(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF

"""`PostgresIndex`: the job index in PostgreSQL (``--state-url``), shared by the hosts of a
cluster, through psycopg 3.

The writer thread of `taskrunner.jobs.store.JobStore` writes on one connection of its own
(a transaction per batch; a broken connection is dropped and made again at the next try).
Reads run on the event loop through psycopg's `AsyncConnectionPool`, so a listing never
holds a thread, and a slow or absent server costs a request at most the pool's ``timeout``
before it is answered 503. Every statement has a ``statement_timeout``.

Heartbeats and their ages are taken by the server's clock (``clock_timestamp()``), so hosts
whose clocks disagree still agree on which instance went silent. The tables are those of
`taskrunner.jobs.schema`, in PostgreSQL's types; instances starting together create them
under an advisory lock.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
import psycopg_pool

from taskrunner.errors import IndexUnreachable, StoreError
from taskrunner.jobs.index import JobQuery, Opened, Pending, Sibling, listed_record, listing_sql
from taskrunner.jobs.schema import COLUMNS, STREAMS, JobRecord, ensure_postgresql_schema

_SCHEMA_LOCK = 0x7461736B  # pg_advisory_xact_lock key: "task"
_NOW = "extract(epoch from clock_timestamp())::double precision"
_INSERT = (f"INSERT INTO jobs ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('%s' for _ in COLUMNS)})")
_UPSERT = (_INSERT + " ON CONFLICT (id) DO UPDATE SET "
           + ", ".join(f"{name} = EXCLUDED.{name}" for name in COLUMNS[1:]))
_INSERT_CHUNK = ("INSERT INTO chunks (job, seq, stream, data) VALUES (%s, %s, %s, %s) "
                 "ON CONFLICT (job, seq) DO UPDATE SET stream = EXCLUDED.stream, "
                 "data = EXCLUDED.data")
_HEARTBEAT = (f"INSERT INTO instances (name, heartbeat) VALUES (%s, {_NOW}) "
              "ON CONFLICT (name) DO UPDATE SET heartbeat = EXCLUDED.heartbeat")


class PostgresIndex:
    """The job index at ``url`` (``postgresql://user[:password]@host[:port]/database``)."""

    errors: tuple[type[Exception], ...] = (psycopg.Error,)  # PoolTimeout is one

    def __init__(self, url: str, *, connect_timeout: float = 3.0, read_timeout: float = 2.0,
                 statement_timeout: float = 10.0, readers: int = 4) -> None:
        self.url = url
        self.where = redact(url)
        self._settings: dict[str, Any] = {
            "connect_timeout": max(1, round(connect_timeout)),
            "options": f"-c statement_timeout={int(statement_timeout * 1000)}",
            "application_name": "taskrunner",
        }
        self._read_timeout = read_timeout
        self._readers = readers
        self._writer: psycopg.Connection[Any] | None = None
        self._pool: psycopg_pool.AsyncConnectionPool | None = None
        # The pool logs each failed reconnection; the store logs an outage once.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

    # -- the writer thread's side --------------------------------------------------------

    def open(self, instance: str) -> Opened:
        """Connect, create the tables if need be; return what the index holds of
        ``instance``."""
        try:
            db = self._connection()
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                ensure_postgresql_schema(db, self.where)
            rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE instance = %s "
                              "ORDER BY created", (instance,)).fetchall()
            beat = db.execute(f"SELECT heartbeat, holder, {_NOW} - heartbeat FROM instances "
                              "WHERE name = %s", (instance,)).fetchone()
        except StoreError:
            self.close()
            raise
        except psycopg.Error as exc:
            self.close()
            why = f"--state-url: cannot use {self.where}: {' '.join(str(exc).split())}"
            if _unreachable(exc):
                raise IndexUnreachable(why) from None
            raise StoreError(why) from None
        return Opened([JobRecord.from_row(row) for row in rows], *(beat or (None, None, None)))

    def claim(self, instance: str, holder: str, realm: str, url: str | None,
              check: Callable[[list[Sibling]], None]) -> None:
        """Unless ``check`` refuses the other instances, write ``instance``'s heartbeat now,
        its holder, realm and URL (one transaction, under the lock that other claims
        take)."""
        db = self._connection()
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            check([Sibling(*row) for row in db.execute(
                f"SELECT name, realm, holder, {_NOW} - heartbeat FROM instances "
                "WHERE name <> %s", (instance,)).fetchall()])
            db.execute(
                f"INSERT INTO instances (name, heartbeat, holder, realm, url) "
                f"VALUES (%s, {_NOW}, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
                "heartbeat = EXCLUDED.heartbeat, holder = EXCLUDED.holder, "
                "realm = EXCLUDED.realm, url = EXCLUDED.url", (instance, holder, realm, url))

    def release(self, instance: str, holder: str) -> None:
        """Give the name up, if this holder still holds it."""
        self._connection().execute(
            "UPDATE instances SET holder = NULL, url = NULL WHERE name = %s AND holder = %s",
            (instance, holder))

    def insert(self, records: list[JobRecord]) -> None:
        """Insert new jobs' rows, in one transaction."""
        db = self._connection()
        try:
            with db.transaction(), db.cursor() as cursor:
                cursor.executemany(_INSERT, [record.row() for record in records])
        except psycopg.Error:
            self._drop_if_broken()
            raise

    def write(self, pending: Pending, instance: str) -> None:
        """Write everything pending and the heartbeat, in one transaction."""
        db = self._connection()
        deleted = [job_id for job_id, change in pending.jobs.items() if change.deleted]
        records = [change.record.row() for change in pending.jobs.values()
                   if change.record is not None and not change.deleted]
        chunks = [(job_id, seq, STREAMS.index(stream), data)
                  for job_id, change in pending.jobs.items() if not change.deleted
                  for seq, stream, data in change.chunks]
        try:
            with db.transaction(), db.cursor() as cursor:
                if deleted:
                    cursor.execute("DELETE FROM chunks WHERE job = ANY(%s)", (deleted,))
                    cursor.execute("DELETE FROM jobs WHERE id = ANY(%s)", (deleted,))
                if records:
                    cursor.executemany(_UPSERT, records)
                if chunks:
                    cursor.executemany(_INSERT_CHUNK, chunks)
                if pending.heartbeat is not None:
                    cursor.execute(_HEARTBEAT, (instance,))
        except psycopg.Error:
            self._drop_if_broken()
            raise

    def close(self) -> None:
        """Close the writer's connection (the readers' pool closes in `close_reads`)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._writer is None or self._writer.closed:
            self._writer = psycopg.connect(self.url, autocommit=True, **self._settings)
        return self._writer

    def _drop_if_broken(self) -> None:
        if self._writer is not None and self._writer.broken:
            self.close()

    # -- reads, on the event loop --------------------------------------------------------

    async def heartbeats(self) -> dict[str, tuple[float, float]]:
        """Each instance's last heartbeat and its age in seconds, by the server's clock."""
        rows = await self._fetch(f"SELECT name, heartbeat, {_NOW} - heartbeat FROM instances")
        return {name: (beat, age) for name, beat, age in rows}

    async def find(self, query: JobQuery, lost_owners: Mapping[str, float]) -> list[JobRecord]:
        """One listing page."""
        sql, params = listing_sql(query, lost_owners, "%s")
        return [listed_record(row) for row in await self._fetch(sql, params)]

    async def get(self, job_id: str) -> JobRecord | None:
        """One job's row."""
        rows = await self._fetch(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = %s",
                                 [job_id])
        return JobRecord.from_row(rows[0]) if rows else None

    async def instance_url(self, instance: str) -> str | None:
        """The URL ``instance`` advertised, while a process holds its name."""
        rows = await self._fetch("SELECT url FROM instances WHERE name = %s AND holder IS NOT "
                                 "NULL", [instance])
        return rows[0][0] if rows else None

    async def output(self, job_id: str) -> list[tuple[str, bytes]]:
        """One job's stored output, in the order written."""
        rows = await self._fetch("SELECT stream, data FROM chunks WHERE job = %s ORDER BY seq",
                                 [job_id])
        return [(STREAMS[stream], bytes(data)) for stream, data in rows]

    async def close_reads(self) -> None:
        """Close the readers' pool."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _fetch(self, sql: str, params: list[Any] | None = None) -> list[Any]:
        if self._pool is None:
            self._pool = psycopg_pool.AsyncConnectionPool(
                self.url, min_size=0, max_size=self._readers, open=False,
                timeout=self._read_timeout, kwargs={"autocommit": True, **self._settings})
            await self._pool.open(wait=False)
        async with self._pool.connection() as db:
            cursor = await db.execute(sql, params)
            return await cursor.fetchall()


_TRANSIENT = ("starting up", "not yet accepting connections", "shutting down", "in recovery",
              "too many clients")


def _unreachable(exc: psycopg.Error) -> bool:
    # No server answered (refused, no route, a timeout), or one answered that it cannot
    # take us yet: worth waiting for. A server that refused the login or knows no such
    # database answered too, and that is a mistake to fix. libpq reports a failed
    # connection as text only (no SQLSTATE): the server's own refusals carry "FATAL:".
    if not isinstance(exc, psycopg.OperationalError) or exc.sqlstate is not None:
        return False
    text = str(exc)
    return "FATAL:" not in text or any(phrase in text for phrase in _TRANSIENT)


def redact(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))

"""`open_store`: the job index that ``--state-dir`` or ``--state-url`` names, opened for one
instance, or None without either.

A PostgreSQL server that does not answer is waited for (one warning, then a try every few
seconds), so that hosts and their index may start in any order, after a power cut say, and
no supervisor gives up; an index that answers and refuses is a `StartupError` at once.
Neither sqlite3 nor psycopg is imported before an index is asked for: an instance without
one never loads them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from taskrunner.config import Config
from taskrunner.errors import IndexUnreachable, StartupError, StoreError

if TYPE_CHECKING:
    from taskrunner.jobs.index import Backend
    from taskrunner.jobs.store import JobStore

log = logging.getLogger("taskrunner.server")


async def open_store(config: Config, url: str, instance: str, port: int, realm: str,
                     advertise: str | None = None,
                     waiting: Callable[[str], None] | None = None) -> JobStore | None:
    """The index of ``config`` (``url``: the PostgreSQL URL, read already), opened as
    ``instance`` listening on ``port`` with callers of ``realm``, reached by its siblings
    at ``advertise``: the name is held until the store is closed. Waits for a server that
    does not answer, telling ``waiting`` why (the service manager's status line);
    `StartupError` (one line) if the index cannot be used."""
    delay = 1.0
    while True:
        try:
            return _job_store(config, url, instance, port, realm, advertise)
        except IndexUnreachable as exc:
            if delay == 1.0:
                log.warning("%s; waiting for it (tried again every few seconds)", exc)
                if waiting is not None:
                    waiting(f"waiting for the job index: {exc}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _job_store(config: Config, url: str, instance: str, port: int,
               realm: str, advertise: str | None) -> JobStore | None:
    if not (config.state_dir or url):
        return None
    from taskrunner.jobs.store import JobStore

    backend: Backend
    if url:
        try:
            from taskrunner.jobs.backends.postgresql import PostgresIndex
        except ImportError as exc:
            raise StartupError(f"--state-url needs psycopg ({exc}): install taskrunner with "
                               "its postgresql extra, or requirements/serve.txt") from None
        backend = PostgresIndex(url)
    else:
        from taskrunner.jobs.backends.sqlite import SQLiteIndex

        backend = SQLiteIndex(config.state_dir)
    store = JobStore(backend, instance, realm=realm, lost_after=config.lost_after,
                     listening=f"{config.address}:{port}", url=advertise)
    try:
        store.open()
    except IndexUnreachable:
        raise
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    return store

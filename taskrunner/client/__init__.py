"""A Python client for taskrunner, and the ``trun`` command line built on it.

    with Client("http://127.0.0.1:8885", token) as client:
        result = client.run(["echo", "hi"])          # RunResult: status, stdout, ...
        job = client.submit(["make", "test"])        # Job, running or queued
        for chunk in job.follow():                   # Chunk(stream, data), live
            print(chunk.data, end="")
        job.wait().exit_code

`AsyncClient` is the same for asyncio. This layer speaks HTTP only: it imports nothing of
the server's modules, and they nothing of it (contracts in pyproject.toml). The manual is
docs/client.md.

The clients themselves (aio.py, sync.py: httpx) load on first use of their names, so that
``python -m taskrunner.client`` runs its ``__main__`` first, which says in one line that a
dependency is missing instead of a traceback from this import (taskrunner/missing.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from taskrunner.client.errors import (
    BadRequest,
    CannotStart,
    CertificateNotTrusted,
    ClientError,
    ConnectFailed,
    ConnectionLost,
    Forbidden,
    InvalidURL,
    NotFound,
    ProtocolError,
    ServiceError,
    TimedOut,
    TooManyRequests,
    TransportError,
    Unauthorized,
    Unavailable,
)
from taskrunner.client.models import Chunk, JobInfo, RunResult, Usage, exit_code

if TYPE_CHECKING:
    from taskrunner.client.aio import AsyncClient, AsyncJob
    from taskrunner.client.sync import Client, Job

_LAZY = {"AsyncClient": "aio", "AsyncJob": "aio", "Client": "sync", "Job": "sync"}

__all__ = [
    "AsyncClient", "AsyncJob", "BadRequest", "CannotStart", "CertificateNotTrusted", "Chunk",
    "Client", "ClientError", "ConnectFailed", "ConnectionLost", "Forbidden", "InvalidURL", "Job",
    "JobInfo", "NotFound", "ProtocolError", "RunResult", "ServiceError", "TimedOut",
    "TooManyRequests", "TransportError", "Unauthorized", "Unavailable", "Usage", "exit_code",
]


def __getattr__(name: str) -> object:
    """`AsyncClient`, `AsyncJob`, `Client` and `Job`, imported when first asked for."""
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)

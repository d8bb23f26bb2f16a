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
"""

from taskrunner.client.aio import AsyncClient, AsyncJob
from taskrunner.client.errors import (
    BadRequest,
    CannotStart,
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
from taskrunner.client.models import Chunk, JobInfo, RunResult, exit_code
from taskrunner.client.sync import Client, Job

__all__ = [
    "AsyncClient", "AsyncJob", "BadRequest", "CannotStart", "Chunk", "Client", "ClientError",
    "ConnectFailed", "ConnectionLost", "Forbidden", "InvalidURL", "Job", "JobInfo", "NotFound",
    "ProtocolError", "RunResult", "ServiceError", "TimedOut", "TooManyRequests",
    "TransportError", "Unauthorized", "Unavailable", "exit_code",
]

"""What the sync and async clients share about httpx: the base URL, the headers, the
timeouts, and httpx's exceptions turned into this package's (errors.py)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import httpx

from taskrunner.client.errors import (
    CertificateNotTrusted,
    ConnectFailed,
    ConnectionLost,
    InvalidURL,
    TimedOut,
    TransportError,
)
from taskrunner.client.protocol import Request, Response

#: Seconds to wait for a connection to be made.
CONNECT_TIMEOUT = 10.0
#: Seconds to send a request, or to wait for a pooled connection.
WRITE_TIMEOUT = 30.0


def base_url(url: str) -> str:
    """``url`` checked (http or https, a host) and without its trailing slash."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as e:
        raise InvalidURL(f"{url!r} is not a URL: {e}") from e
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidURL(f"{url!r} is not an http:// or https:// URL with a host "
                         "(e.g. http://127.0.0.1:8885)")
    return url.rstrip("/")


def verify(url: str, verify: ssl.SSLContext | str | bool) -> ssl.SSLContext | str | bool:
    """httpx's ``verify`` for a client of ``url``: as given for https; for http, no TLS
    context at all. Such a client never makes a TLS connection (it sends relative paths
    only and follows no redirect), and loading the CA bundle would cost a short command
    more than the rest of the client's start."""
    return verify if httpx.URL(url).scheme == "https" else False


def headers(token: str | None) -> dict[str, str]:
    """The headers of every request: the bearer token, when there is one."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def options(request: Request) -> dict[str, object]:
    """httpx's arguments for ``request`` (method and URL aside)."""
    return {
        "json": request.body,
        "headers": {"Accept": request.accept},
        "timeout": httpx.Timeout(WRITE_TIMEOUT, connect=CONNECT_TIMEOUT,
                                 read=request.read_timeout),
    }


def response(answer: httpx.Response) -> Response:
    """A read httpx answer as the protocol's `Response`."""
    return Response(answer.status_code, answer.headers, answer.content)


@contextmanager
def translated(url: str) -> Iterator[None]:
    """Re-raise httpx's transport exceptions as this package's, naming ``url``."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        untrusted = _cause(e, ssl.SSLCertVerificationError)
        if untrusted is not None:
            reason = untrusted.verify_message or untrusted.reason or "verification failed"
            raise CertificateNotTrusted(
                f"cannot connect to {url}: its certificate is not trusted ({reason})",
                reason) from e
        raise ConnectFailed(f"cannot connect to {url}: {_reason(e)}") from e
    except httpx.TimeoutException as e:
        raise TimedOut(f"{url} did not answer in time: {_reason(e)}") from e
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
        raise ConnectionLost(f"the connection to {url} broke: {_reason(e)}") from e
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as e:
        raise InvalidURL(f"{url}: {e}") from e
    except httpx.TransportError as e:
        raise TransportError(f"{url}: {_reason(e)}") from e


E = TypeVar("E", bound=BaseException)


def _cause(error: BaseException, kind: type[E]) -> E | None:
    # The first exception of ``kind`` in the chain httpx and anyio wrap around the real one.
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, kind):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _reason(error: Exception) -> str:
    # httpx wraps the OS error, and anyio wraps it once more ("All connection attempts
    # failed"): the OS's text for the innermost errno ("Connection refused") says the most.
    # An SSL error is an OSError too, but its errno is the TLS library's, not the OS's
    # (1, which strerror calls "Operation not permitted"): its own reason says more.
    tls = _cause(error, ssl.SSLError)
    if tls is not None:
        return f"TLS: {tls.reason or tls}"
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    return str(error) or type(error).__name__

"""What the client raises: every failure, the service's own errors and the network's.

This module must import nothing of the package: the client is a layer of its own that
speaks only HTTP to the service (an import-linter contract in pyproject.toml says so).

    ClientError                     anything this library raises; catch it to catch all
    ├── InvalidURL                  the service URL is not http(s)://host[:port][/prefix]
    ├── TransportError              no complete HTTP answer
    │   ├── ConnectFailed           refused, unreachable, name not found, TLS failed
    │   │   └── CertificateNotTrusted   https: the instance's certificate was not trusted
    │   ├── TimedOut                no answer within the client's timeout
    │   └── ConnectionLost          the connection broke mid-answer (an output stream cut)
    ├── ProtocolError               an answer that is not taskrunner's: not JSON, wrong shape
    └── ServiceError                the service answered {"error": code, "message": text}
        ├── BadRequest              400, 408, 413: the request itself is wrong
        ├── Unauthorized            401: no token, or a wrong one
        ├── Forbidden               403: program_not_allowed
        ├── NotFound                404: not_found (a wrong URL), job_not_found
        ├── CannotStart             422: spawn_failed
        ├── TooManyRequests         429: no free slot and no room to queue (retry_after)
        └── Unavailable             5xx: shutting down, store or resources (retry_after)

A `ServiceError` keeps the service's ``code`` (the API's ``error`` field), ``status``,
``message`` and ``retry_after`` (seconds from ``Retry-After``, or None), so callers branch
on the category or on the code.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of everything the client raises."""


class InvalidURL(ClientError):
    """The service URL cannot be used (no http or https scheme, no host)."""


class TransportError(ClientError):
    """No complete HTTP answer arrived."""


class ConnectFailed(TransportError):
    """The connection could not be made."""


class CertificateNotTrusted(ConnectFailed):
    """https: the instance's certificate failed verification (self-signed, an unknown CA,
    expired, another host's name); ``reason`` is the TLS library's (``verify_message``)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class TimedOut(TransportError):
    """The service did not answer within the client's timeout."""


class ConnectionLost(TransportError):
    """The connection broke before the answer was whole."""


class ProtocolError(ClientError):
    """The answer is not one a taskrunner instance gives (another server at that URL?)."""


class ServiceError(ClientError):
    """The service refused the request with its JSON error shape."""

    def __init__(self, status: int, code: str, message: str,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{message} ({status} {code})")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class BadRequest(ServiceError):
    """400, 408, 413: the request is wrong (fields, JSON, size, a body sent too slowly)."""


class Unauthorized(ServiceError):
    """401: the instance wants a token and got none, or a wrong one."""


class Forbidden(ServiceError):
    """403: the program is not on the instance's allowlist."""


class NotFound(ServiceError):
    """404: no such job, or no such path (the URL does not lead to a taskrunner API)."""


class CannotStart(ServiceError):
    """422: the command could not start (program not found or not executable, cwd missing)."""


class TooManyRequests(ServiceError):
    """429: every slot busy and no room to wait; nothing ran, so a retry is safe."""


class Unavailable(ServiceError):
    """5xx: shutting down, the job store failing, out of resources, or a proxy's error."""


def service_error(status: int, code: str, message: str,
                  retry_after: float | None = None) -> ServiceError:
    """The `ServiceError` subclass for an HTTP status."""
    cls: type[ServiceError]
    if status in (400, 408, 413):
        cls = BadRequest
    elif status >= 500:
        cls = Unavailable
    else:
        cls = _BY_STATUS.get(status, ServiceError)
    return cls(status, code, message, retry_after)


_BY_STATUS: dict[int, type[ServiceError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 422: CannotStart, 429: TooManyRequests,
}

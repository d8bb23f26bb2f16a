"""Every error taskrunner reports to a caller, as one small tree.

Each class knows the HTTP status it maps to and a short, stable error code; the base
handler turns any of them into the one JSON shape ``{"error": code, "message": text}``.

    TaskRunnerError                      (500, "internal")
    ├── RequestError                     (400, "bad_request")     the request is malformed
    │   ├── InvalidJSON                  (400, "invalid_json")
    │   ├── InvalidField                 (400, "invalid_field")
    │   ├── UnknownField                 (400, "unknown_field")
    │   └── InvalidParam                 (400, "invalid_param")   an action's parameter
    ├── Unauthorized                     (401, "unauthorized")
    ├── Forbidden                        (403, "forbidden")
    │   ├── ProgramNotAllowed            (403, "program_not_allowed")
    │   ├── MissingScope                 (403, "missing_scope")   not the caller's scope
    │   ├── CallbackNotAllowed           (403, "callback_not_allowed")  host off --callback-allow
    │   └── OriginNotAllowed             (403, "origin_not_allowed")  a foreign page's request
    ├── NotFound                         (404, "not_found")
    │   ├── JobNotFound                  (404, "job_not_found")
    │   └── ActionNotFound               (404, "action_not_found")  not in --actions (for it)
    ├── MethodNotAllowed                 (405, "method_not_allowed")
    ├── BodyTimeout                      (408, "body_timeout")
    ├── PayloadTooLarge                  (413, "body_too_large")
    ├── UnsupportedMediaType             (415, "unsupported_media_type")  a browser's simple body
    ├── HostNotAllowed                   (421, "host_not_allowed")  a Host it does not answer to
    ├── SpawnError                       (422, "spawn_failed")    the command could not start
    ├── TooManyRequests                  (429, "too_many_requests")
    ├── HeadersTooLarge                  (431, "headers_too_large")  answered by the connection
    ├── OutOfResources                   (503, "out_of_resources")  no fds or processes left
    ├── ServiceUnavailable               (503, "shutting_down")
    ├── NotReady                         (503, "not_ready")  /readyz: starting or draining
    ├── StoreUnavailable                 (503, "store_unavailable")  the job index cannot be used
    └── OwnerUnreachable                 (503, "owner_unreachable")  a job runs elsewhere

    StartError = SpawnError | OutOfResources   what starting a command can raise

Callers catch a category (``RequestError``) or the whole tree (``TaskRunnerError``). Two
errors are the operator's, not a caller's, and stop the instance with one line:

    StartupError                         the configuration cannot be served safely
    StoreError                           the job store cannot be opened
    └── IndexUnreachable                 its server did not answer: the instance waits for it
"""


class TaskRunnerError(Exception):
    """Base of every error taskrunner reports; ``status`` and ``code`` go to the client."""

    status: int = 500
    code: str = "internal"
    retry_after: int | None = None
    """Seconds after which the caller may try again (the ``Retry-After`` header), if any."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RequestError(TaskRunnerError):
    """The request body or its fields are malformed."""

    status = 400
    code = "bad_request"


class InvalidJSON(RequestError):
    """The body is not valid UTF-8 JSON, or not a JSON object."""

    code = "invalid_json"


class InvalidField(RequestError):
    """A field has the wrong type or an unacceptable value."""

    code = "invalid_field"


class UnknownField(RequestError):
    """The body carries a field the endpoint does not know (often a misspelling)."""

    code = "unknown_field"


class InvalidParam(RequestError):
    """An action's parameter is missing, unknown, or breaks one of its rules."""

    code = "invalid_param"


class Unauthorized(TaskRunnerError):
    """A bearer token is required and was missing or wrong."""

    status = 401
    code = "unauthorized"


class Forbidden(TaskRunnerError):
    """The caller may not do this."""

    status = 403
    code = "forbidden"


class ProgramNotAllowed(Forbidden):
    """The program is not on the instance's allowlist."""

    code = "program_not_allowed"


class MissingScope(Forbidden):
    """The caller (``--callers``) is known but its scopes do not include this route's."""

    code = "missing_scope"


class CallbackNotAllowed(Forbidden):
    """A job's ``callback_url`` names a host that is not on ``--callback-allow`` (or the
    instance sends no callbacks): callers may not make the instance reach other hosts."""

    code = "callback_not_allowed"


class OriginNotAllowed(Forbidden):
    """A state-changing request from a page of another origin (``Origin`` names a host the
    instance does not answer to, or is ``null``) that ``--allowed-origin`` does not name."""

    code = "origin_not_allowed"


class NotFound(TaskRunnerError):
    """No such route or resource."""

    status = 404
    code = "not_found"


class JobNotFound(NotFound):
    """No job with this id is known to the instance."""

    code = "job_not_found"


class ActionNotFound(NotFound):
    """No action by this name, or none the caller may use: the same answer for both."""

    code = "action_not_found"


class MethodNotAllowed(TaskRunnerError):
    """The route exists but does not take this HTTP method."""

    status = 405
    code = "method_not_allowed"


class BodyTimeout(TaskRunnerError):
    """The request body did not arrive within ``--body-timeout``."""

    status = 408
    code = "body_timeout"


class UnsupportedMediaType(TaskRunnerError):
    """A browser's request with a body a page may send without asking first (``text/plain``,
    a form encoding, or none declared): taskrunner takes only JSON from a browser."""

    status = 415
    code = "unsupported_media_type"


class HostNotAllowed(TaskRunnerError):
    """The ``Host`` names a host the instance does not answer to (a rebound DNS name, a
    misrouted request): ``--allowed-host`` adds names."""

    status = 421
    code = "host_not_allowed"


EdgeRefusal = HostNotAllowed | OriginNotAllowed | UnsupportedMediaType
EDGE_REFUSALS = (HostNotAllowed, OriginNotAllowed, UnsupportedMediaType)
"""What a request a web page could have made is refused with (taskrunner/web/edge.py)."""


class PayloadTooLarge(TaskRunnerError):
    """The request body is larger than ``--max-body``."""

    status = 413
    code = "body_too_large"


class SpawnError(TaskRunnerError):
    """The command could not be started: program missing, not executable, bad ``cwd``."""

    status = 422
    code = "spawn_failed"


class TooManyRequests(TaskRunnerError):
    """The instance is at its running and queued limits; ``retry_after`` is in seconds."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after: int | None = retry_after


class HeadersTooLarge(TaskRunnerError):
    """The request line and headers are over the connection's limit, in bytes or in header
    fields; answered by the connection layer (no handler sees such a request), which then
    closes the connection."""

    status = 431
    code = "headers_too_large"


class OutOfResources(TaskRunnerError):
    """The instance ran out of file descriptors, processes or memory starting a command.

    The caller did nothing wrong and may retry (``Retry-After``), here or on another
    instance; nothing of the command was left running.
    """

    status = 503
    code = "out_of_resources"
    retry_after = 1


class ServiceUnavailable(TaskRunnerError):
    """The instance is shutting down and takes no new commands."""

    status = 503
    code = "shutting_down"

    def __init__(self, message: str = "the instance is shutting down; try another one") -> None:
        super().__init__(message)


class NotReady(TaskRunnerError):
    """``GET /readyz`` while the instance is starting or draining (after SIGTERM, or a
    recycle): a load balancer should send new requests elsewhere; the message says which."""

    status = 503
    code = "not_ready"
    retry_after = 1


class StoreUnavailable(TaskRunnerError):
    """The job index (``--state-dir``, ``--state-url``) cannot record a job, or be read.

    A job refused so was not started; the caller may retry (``Retry-After``), here once the
    store recovers, or on another instance.
    """

    status = 503
    code = "store_unavailable"
    retry_after = 5


class OwnerUnreachable(TaskRunnerError):
    """A job still running on another instance was asked for its live output or a cancel,
    which only its owner can give: the request reached this instance because the owner did
    not answer (or was asked of this one directly)."""

    status = 503
    code = "owner_unreachable"
    retry_after = 5


StartError = SpawnError | OutOfResources
"""Why a command did not start: the request's fault (422) or this process's limits (503)."""


class StartupError(Exception):
    """The configuration cannot be served safely; the message is one line for the operator."""


class StoreError(Exception):
    """The job store cannot be opened; the message is one line for the operator."""


class IndexUnreachable(StoreError):
    """The job index's server (``--state-url``) did not answer at all: it may be starting
    or coming back, so an instance starting waits for it rather than giving up."""

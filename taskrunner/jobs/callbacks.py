"""Completion callbacks: a job's final JSON POSTed to its ``callback_url``, signed, retried.

Who may be called is the operator's list, ``--callback-allow`` (`CallbackHosts`): exact
host names or addresses, each with a port or meaning the scheme's default one. A caller
names a URL; only its host and port are checked, never what the name resolves to, so a
caller cannot point the instance at an address the operator did not write down. No list,
no callbacks.

`CallbackSender` delivers: when a job ends, its job object (as ``GET /jobs/<id>`` shows it
then) is POSTed with ``X-Taskrunner-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>">`` (Stripe's scheme): the time is signed with the body, so a receiver that
refuses an old ``t`` cannot be sent a captured callback again later. It carries the job's
W3C ``traceparent`` too (`trace_headers`). Every try sends the
same bytes, signed anew at its own time. A connection error, a timeout (`TRY_TIMEOUT` a
try) or an answer other than 2xx is retried after each of `BACKOFF` seconds; redirects are
not followed (they could lead off the list). Each delivery is a task of its own, so a slow
or hanging receiver holds up nothing but its own delivery, and nothing waits for it: the
job has ended before its callback starts. The outcome is the job's `CallbackOutcome`, saved
after every try.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.httputil import HTTPInputError

from taskrunner import __version__
from taskrunner.errors import StartupError

if TYPE_CHECKING:
    from taskrunner.jobs.job import Job

log = logging.getLogger("taskrunner.jobs")

BACKOFF = (2.0, 4.0, 8.0, 16.0, 32.0)
"""Seconds before each retry: six tries over about a minute."""

TRY_TIMEOUT = 10.0
"""Seconds one try may take, connecting included."""

SHUTDOWN_GRACE = 3.0
"""Seconds deliveries still pending at shutdown may go on before they are recorded failed."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_key(url: str) -> tuple[str, int]:
    """``(host, port)`` of an http(s) URL or of a ``HOST[:PORT]`` entry (``//`` + entry),
    the host lower case, the port the scheme's default when none is given."""
    parts = urlsplit(url)
    port = parts.port  # ValueError for a port that is not one
    return (parts.hostname or "", port if port is not None else
            _DEFAULT_PORTS.get(parts.scheme, 80))


def shown_host(url: str) -> str:
    """``HOST:PORT`` of ``url`` as a list entry would name it (an IPv6 host in brackets);
    what logs and errors show rather than the URL, whose query may hold a secret."""
    host, port = host_key(url)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def trace_headers(job: Job) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of ``job``'s callback: the trace of the request
    that submitted it, the run's span as the parent (as the command's ``TRACEPARENT``), so
    the receiver's work joins the caller's trace. Empty for a job without a trace."""
    if job.trace is None:
        return {}
    return {name.lower(): value for name, value in job.trace.variables().items()}


class CallbackHosts:
    """The hosts ``--callback-allow`` names; an empty list permits nothing."""

    def __init__(self, entries: tuple[str, ...] = ()) -> None:
        # An entry without a port means the default port of the URL's own scheme.
        self._exact: set[tuple[str, int]] = set()
        self._default: set[str] = set()
        for entry in entries:
            host, port = host_key(f"//{entry}")
            if urlsplit(f"//{entry}").port is None:
                self._default.add(host)
            else:
                self._exact.add((host, port))

    def __bool__(self) -> bool:
        return bool(self._exact or self._default)

    def permits(self, url: str) -> bool:
        """True if the host and port of ``url`` (an http(s) URL) are on the list."""
        host, port = host_key(url)
        if (host, port) in self._exact:
            return True
        return host in self._default and port == _DEFAULT_PORTS[urlsplit(url).scheme]


def load_secret(path: str) -> bytes:
    """The signing secret in ``path``, surrounding whitespace stripped; raise
    `StartupError` if it cannot be read or is empty."""
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise StartupError(f"cannot read --callback-secret-file {path!r}: "
                           f"{exc.strerror or exc}") from None
    if not secret:
        raise StartupError(f"--callback-secret-file {path!r} is empty")
    return secret


def signature(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Taskrunner-Signature`` value of ``body`` sent at ``timestamp`` (Unix
    seconds): ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">``."""
    digest = hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class CallbackSender:
    """Delivers the callbacks of one instance, each as a task of its own.

    Without hosts or a secret every callback is refused. ``max_clients`` bounds the tries in
    flight at once (one socket each); Tornado queues the rest, and time in that queue counts
    against a try's timeout, so it is set to ``--max-jobs``, not to Tornado's default of 10,
    which ten hanging receivers would fill.
    """

    def __init__(self, hosts: CallbackHosts | None = None, secret: bytes | None = None,
                 *, max_clients: int = 1000) -> None:
        self.hosts = hosts or CallbackHosts()
        self.secret = secret
        self.backoff = BACKOFF
        self.try_timeout = TRY_TIMEOUT
        self.max_clients = max_clients
        self._client: AsyncHTTPClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.on_outcome: Callable[[str], None] | None = None
        """Called with each delivery's final status (``delivered``, ``failed``,
        ``refused``); e.g. a metric."""

    def send(self, job: Job, body: Callable[[], Awaitable[bytes]],
             saved: Callable[[Job], None]) -> None:
        """Start delivering ``job``'s callback: ``body()`` gives the bytes to POST,
        ``saved(job)`` is called after each change of ``job.callback``. Returns at once."""
        saved = self._reporting(saved)
        if self._closed:  # a job that ended after the shutdown's grace for callbacks
            assert job.callback is not None
            job.callback.stopped("the instance stopped before the callback was delivered")
            saved(job)
            return
        task = asyncio.get_running_loop().create_task(self._deliver(job, body, saved))
        self._tasks.add(task)
        task.add_done_callback(self._forget)

    async def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Let pending deliveries go on for ``grace`` seconds, then stop them (each is
        recorded failed) and close the HTTP client."""
        self._closed = True
        if self._tasks:
            log.info("shutting down: waiting up to %ss for %s callbacks", grace,
                     len(self._tasks))
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._client is not None:
            self._client.close()
            self._client = None

    def _reporting(self, saved: Callable[[Job], None]) -> Callable[[Job], None]:
        # ``saved``, and `on_outcome` told of the final status once the outcome has one.
        def save(job: Job) -> None:
            saved(job)
            assert job.callback is not None
            if job.callback.status != "pending" and self.on_outcome is not None:
                self.on_outcome(job.callback.status)

        return save

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # already logged by _deliver; retrieved, so asyncio stays quiet

    async def _deliver(self, job: Job, body: Callable[[], Awaitable[bytes]],
                       saved: Callable[[Job], None]) -> None:
        outcome = job.callback
        url = job.callback_url
        assert outcome is not None and url is not None
        where = shown_host(url)
        try:
            if self.secret is None or not self.hosts.permits(url):
                outcome.refused(f"{where} is not on this instance's --callback-allow")
                saved(job)
                log.warning("job %s callback refused: %s", job.id, outcome.error)
                return
            data = await body()
            for attempt, delay in enumerate((*self.backoff, None), start=1):
                outcome.trying()
                error = await self._try(url, data, job, attempt)
                outcome.tried(error, final=delay is None)
                saved(job)
                if error is None:
                    log.info("job %s callback delivered to %s (attempt %s)", job.id, where,
                             attempt)
                    return
                if delay is None:
                    log.warning("job %s callback to %s failed after %s attempts: %s", job.id,
                                where, attempt, error)
                    return
                log.info("job %s callback to %s: attempt %s failed (%s); next in %ss",
                         job.id, where, attempt, error, delay)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            outcome.stopped("the instance stopped before the callback was delivered")
            saved(job)
            log.warning("job %s callback to %s: %s (%s attempts)", job.id, where,
                        outcome.error, outcome.attempts)
            raise
        except Exception:
            # A bug of ours: say so on the job rather than leave it pending for ever.
            log.exception("job %s callback to %s: internal error", job.id, where)
            outcome.stopped("internal error; the instance log has the details")
            saved(job)
            raise

    async def _try(self, url: str, data: bytes, job: Job, attempt: int) -> str | None:
        # One POST; None if the receiver answered 2xx, else what went wrong, for the job.
        if self._client is None:
            self._client = AsyncHTTPClient(force_instance=True, max_clients=self.max_clients)
        assert self.secret is not None
        request = HTTPRequest(
            url, method="POST", body=data, follow_redirects=False,
            connect_timeout=self.try_timeout, request_timeout=self.try_timeout,
            streaming_callback=_discard, user_agent=f"taskrunner/{__version__}",
            headers={"Content-Type": "application/json",
                     "X-Taskrunner-Signature": signature(self.secret, data, int(time.time())),
                     "X-Taskrunner-Job": job.id, "X-Taskrunner-Attempt": str(attempt),
                     **trace_headers(job)})
        try:
            response = await self._client.fetch(request, raise_error=False)
        except HTTPClientError as exc:  # a timeout, a closed stream (Tornado's 599s)
            return exc.message or str(exc)
        except OSError as exc:  # refused, unreachable, a name that does not resolve, TLS
            return exc.strerror or str(exc) or type(exc).__name__
        except HTTPInputError as exc:  # an answer that is not HTTP
            return f"malformed response: {exc}"
        except ValueError as exc:  # a URL Tornado will not send (the validation let it by)
            return f"cannot send: {exc}"
        if 200 <= response.code < 300:
            return None
        if 300 <= response.code < 400:
            return f"HTTP {response.code} (redirects are not followed)"
        return f"HTTP {response.code}"


def _discard(chunk: bytes) -> None:
    # The receiver's answer body is not kept: only its status counts.
    pass

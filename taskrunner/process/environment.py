"""A command's environment: the one place it is built, from a clean start.

A command gets nothing of the instance's environment but what it needs to behave as a
command run by hand would, so that the instance's secrets (``PGPASSWORD``, a token, cloud
credentials) and what a service manager hands the instance (``NOTIFY_SOCKET``,
``LISTEN_FDS``...) never reach it. Layers, each laid over the one before:

1. the base (`base_environment`): ``PATH``, ``LANG``, ``LC_*`` and ``TZ`` of the instance,
   and ``HOME`` of the user commands run as (``--user``'s from the password database, else
   the instance's);
2. the names ``--pass-env`` lists, with the instance's values (`check_pass_env` refuses
   the instance's own secrets and a service manager's names at start);
3. the wrapper's (`taskrunner.process.containment`): ``--user``'s ``USER``/``LOGNAME``, the
   sandbox's ``TMPDIR``; these are layered by the server, over the base;
4. the trace context (`CommandTrace`): ``TRACEPARENT`` and ``TRACESTATE``, W3C's, naming a
   span of the request's trace as the command's parent, so that what the command traces
   joins the caller's trace (the names OpenTelemetry's environment carrier reads);
5. the request's ``env``, which wins (`command_environment`): a caller who sets
   ``TRACEPARENT`` itself means it.

Every layer is laid in `command_environment`, so that ``/run``, jobs, sandboxed or not, on
either spawn path, all get the same environment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from taskrunner.errors import StartupError

BASE_NAMES = ("PATH", "LANG", "TZ")
"""Taken from the instance's environment when set (``LC_*`` too, and ``HOME``)."""

# What a service manager (systemd, socket activation) hands a service: each names a socket,
# a file or a process of the instance's, never the command's.
SERVICE_MANAGER_NAMES = frozenset({
    "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "INVOCATION_ID",
    "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY",
    "MAINPID", "MANAGERPID", "SYSTEMD_EXEC_PID", "RUNTIME_DIRECTORY", "STATE_DIRECTORY",
    "CACHE_DIRECTORY", "LOGS_DIRECTORY", "CONFIGURATION_DIRECTORY", "FDSTORE",
    "TRIGGER_UNIT", "TRIGGER_PATH", "TRIGGER_TIMER_REALTIME_USEC",
    "TRIGGER_TIMER_MONOTONIC_USEC", "MONITOR_SERVICE_RESULT", "MONITOR_EXIT_CODE",
    "MONITOR_EXIT_STATUS", "MONITOR_INVOCATION_ID", "MONITOR_UNIT", "REMOTE_ADDR",
    "REMOTE_PORT", "PIDFILE",
})
SERVICE_MANAGER_PREFIXES = ("WATCHDOG_", "LISTEN_", "MONITOR_", "TRIGGER_")
# The instance's own secrets: its token and the job index's password.
SECRET_NAMES = frozenset({"PGPASSWORD"})
SECRET_PREFIXES = ("TASKRUNNER_",)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def never_passed(name: str) -> bool:
    """Whether ``name`` is one no command gets from the instance, even by ``--pass-env``."""
    return (name in SERVICE_MANAGER_NAMES or name in SECRET_NAMES
            or name.startswith(SERVICE_MANAGER_PREFIXES + SECRET_PREFIXES))


def check_pass_env(names: Iterable[str]) -> None:
    """`StartupError` (one line) for a ``--pass-env`` name that is not a variable name, or
    that names a service manager's variable or the instance's own secret: refused rather
    than dropped, so that an operator never believes a command gets what it does not."""
    for name in names:
        if not _NAME.fullmatch(name):
            raise StartupError(f"--pass-env {name!r}: not a variable name")
        if never_passed(name):
            raise StartupError(f"--pass-env {name}: the service manager's or the instance's "
                               "own; never passed to commands (see docs/security.md)")


def base_environment(environ: Mapping[str, str], pass_env: Iterable[str] = (),
                     home: str | None = None) -> dict[str, str]:
    """Layers 1 and 2: what every command starts from, taken from ``environ`` (the
    instance's). ``home`` is the ``HOME`` of the user commands run as (None: the
    instance's)."""
    env = {name: value for name, value in environ.items()
           if name in BASE_NAMES or name.startswith("LC_")}
    if home is not None:
        env["HOME"] = home
    elif "HOME" in environ:
        env["HOME"] = environ["HOME"]
    for name in pass_env:
        if name in environ and not never_passed(name):
            env[name] = environ[name]
    return env


@dataclass(frozen=True)
class CommandTrace:
    """The W3C trace context one command runs in (checked and made by ``web/trace.py``).

    ``span_id`` is the command's parent: the span of its run, a child of ``parent_id``,
    the span of the request that started it. Lower-case hex, as W3C writes them."""

    trace_id: str
    """32 hex digits: the trace the request belongs to (the job records it)."""
    span_id: str
    """16 hex digits: the run's span, the parent-id of the command's ``TRACEPARENT``."""
    parent_id: str
    """16 hex digits: the request's span."""
    flags: str = "01"
    """2 hex digits: W3C's trace-flags, as the caller sent them (01: sampled)."""
    state: str | None = None
    """``tracestate``, passed on as it came (checked, not interpreted)."""

    def traceparent(self) -> str:
        """``TRACEPARENT`` for the command: version 00, this trace, the run's span."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def variables(self) -> dict[str, str]:
        """Layer 4: ``TRACEPARENT``, and ``TRACESTATE`` when the request had one."""
        env = {"TRACEPARENT": self.traceparent()}
        if self.state:
            env["TRACESTATE"] = self.state
        return env


def command_environment(base: Mapping[str, str], request: Mapping[str, str] | None,
                        trace: CommandTrace | None = None) -> Mapping[str, str]:
    """Layers 4 and 5: one command's environment, its trace context and then the request's
    ``env`` over ``base``."""
    if trace is not None:
        return {**base, **trace.variables(), **(request or {})}
    return base if not request else {**base, **request}

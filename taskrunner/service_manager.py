"""The service manager's notify protocol (``sd_notify(3)``), without libsystemd.

A ``Type=notify`` unit gives the instance a datagram socket in ``NOTIFY_SOCKET`` (a path,
or an abstract name written with a leading ``@``); each datagram is newline-separated
``KEY=value`` lines. The instance sends:

- ``READY=1`` once it listens and accepts (the last step of startup, when ``/readyz``
  turns 200): systemd starts the units ordered after it only then;
- ``STOPPING=1`` when it begins to drain (SIGTERM, a recycle), with the reason;
- ``STATUS=...``, one line a human reads in ``systemctl status`` (where it serves, how many
  commands run and wait), sent again when it changes; while starting, what it waits for
  (a job index that does not answer);
- ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` when the unit sets ``WatchdogSec=`` (and
  ``WATCHDOG_PID``, if set, is ours), from a timer of the event loop: a loop that hangs
  stops the pings, and systemd kills and restarts the instance.

Sending never blocks and never fails the instance: a manager that is gone or whose queue is
full costs a warning in the log (once), not a request. The variables are removed from
``os.environ`` when read, as ``sd_notify``'s ``unset_environment`` does; a command's
environment never has them anyway (`taskrunner.process.environment`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, MutableMapping

log = logging.getLogger("taskrunner.server")

NAMES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

STATUS_EVERY = 2.0
"""Seconds between two looks at the status line (sent only when it changed)."""


class Notifier:
    """The instance's side of one ``NOTIFY_SOCKET``."""

    def __init__(self, address: str, watchdog_usec: int = 0) -> None:
        """``address``: ``NOTIFY_SOCKET``'s value; ``watchdog_usec``: ``WATCHDOG_USEC``'s
        (0: no watchdog pings)."""
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_usec = watchdog_usec
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)
        self.status: Callable[[], str] | None = None
        """What the periodic ``STATUS=`` line says; None: no periodic status."""
        self._sent_status = ""
        self._timer: asyncio.TimerHandle | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Notifier | None:
        """The notifier ``environ`` asks for (None: no service manager listens), its
        variables removed from ``environ``."""
        address = environ.get("NOTIFY_SOCKET", "")
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        for name in NAMES:
            environ.pop(name, None)
        if not address.startswith(("/", "@")):
            return None  # unset, or a vsock address this instance does not speak
        ours = not pid or (pid.isdigit() and int(pid) == os.getpid())
        return cls(address, int(usec) if usec.isdigit() and ours else 0)

    def send(self, *lines: str) -> None:
        """Send ``lines`` as one datagram; a failure is logged once, never raised."""
        try:
            self.sock.sendto("\n".join(lines).encode() + b"\n", self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("service manager notification failed (%s): %s", self.address,
                            exc.strerror or exc)

    def tell(self, status: str) -> None:
        """A ``STATUS=`` line now (e.g. while starting: what the instance waits for)."""
        self._sent_status = status
        self.send(f"STATUS={status}")

    def ready(self, status: str) -> None:
        """``READY=1`` with a status line; start the periodic pings and status."""
        self._sent_status = status
        self.send("READY=1", f"STATUS={status}")
        self._tick()

    def stopping(self, reason: str) -> None:
        """``STOPPING=1``: the instance drains (``reason``); pings go on until it exits,
        since a drain lasts up to ``--grace`` and the watchdog still watches it."""
        self._sent_status = f"stopping: {reason}"
        self.send("STOPPING=1", f"STATUS={self._sent_status}")

    @property
    def interval(self) -> float:
        """Seconds between two ticks: half the watchdog's, at most `STATUS_EVERY`."""
        if self.watchdog_usec:
            return min(self.watchdog_usec / 2e6, STATUS_EVERY)
        return STATUS_EVERY

    def _tick(self) -> None:
        lines = ["WATCHDOG=1"] if self.watchdog_usec else []
        if self.status is not None and not self._sent_status.startswith("stopping"):
            text = self.status()
            if text != self._sent_status:
                self._sent_status = text
                lines.append(f"STATUS={text}")
        if lines:
            self.send(*lines)
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def close(self) -> None:
        """Stop the pings and close the socket."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.sock.close()

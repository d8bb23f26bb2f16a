"""systemd, one target of the renderer: ``taskrunner@.service`` and ``taskrunner@.socket``,
one instance per port (``%i``), from the package's templates/taskrunner@.*.template.

The units are templates of systemd's own: one pair serves every port of a host
(``taskrunner@8885.socket``, ``taskrunner@8886.socket``...). Only the settings are filled
in here (the interpreter, the address, the watchdog, the stop timeout, the user); what
each option is for is said in the templates, and which options cannot be used, and why,
in docs/deploy.md.
"""

from __future__ import annotations

from taskrunner.deploy.rendering import render
from taskrunner.deploy.settings import Settings

__all__ = ["UNITS", "service_unit", "socket_unit"]

UNITS = ("service", "socket")
"""What ``print-systemd`` renders: ``taskrunner@.service`` or ``taskrunner@.socket``."""


def _listen(address: str) -> str:
    # ListenStream= takes an IPv6 address in brackets.
    return f"[{address}]" if ":" in address else address


def service_unit(settings: Settings) -> str:
    """``taskrunner@.service``: ``Type=notify``, the instance on port ``%i``."""
    watchdog = (f"# A hung event loop stops the pings: systemd kills and restarts it.\n"
                f"WatchdogSec={settings.watchdog_sec}" if settings.watchdog_sec
                else "# No WatchdogSec (--watchdog-sec 0): no pings are asked for.")
    user = (f"# The user must exist (useradd --system {settings.unit_user}); --user needs "
            f"root:\n# render with --unit-user ''.\nUser={settings.unit_user}\n"
            f"Group={settings.unit_user}" if settings.unit_user
            else "# Root: commands may run as another user (--user), which needs it.")
    return render("taskrunner@.service.template", {
        "WATCHDOG": watchdog, "PYTHON": settings.python, "ADDRESS": settings.address,
        "USER": user, "STOP_WAIT": f"{settings.stop_wait}s"})


def socket_unit(settings: Settings) -> str:
    """``taskrunner@.socket``: the listening socket of the instance on port ``%i``."""
    return render("taskrunner@.socket.template", {"ADDRESS": _listen(settings.address)})

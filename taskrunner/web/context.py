"""What the request handlers of one instance share: its config, engine and live counters.

`make_app` builds one `InstanceContext` and hands it to every handler; nothing lives at
module level, so each test builds a world of its own.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskrunner.actions.actionfile import Actions
from taskrunner.config import Config
from taskrunner.jobs.registry import JobRegistry
from taskrunner.process.engine import ProcessEngine
from taskrunner.process.launcher import Launcher
from taskrunner.web.action_wrappers import ActionWrappers
from taskrunner.web.callers import Callers, implicit_callers
from taskrunner.web.edge import BrowserEdge

if TYPE_CHECKING:
    from tornado.web import RequestHandler

    from taskrunner.metrics import Metrics


@dataclass
class InstanceContext:
    """The state of one serving instance, shared by its handlers."""

    config: Config
    engine: ProcessEngine
    launcher: Launcher
    jobs: JobRegistry
    metrics: Metrics
    port: int = 0
    callers: Callers = field(default_factory=lambda: implicit_callers(None), repr=False)
    """Who may call, found by token; replaced whole when ``--callers`` is re-read."""
    actions: Actions = field(default_factory=Actions, repr=False)
    """The actions of ``--actions`` (none without it); replaced whole on a reload."""
    action_wrappers: ActionWrappers = field(default_factory=ActionWrappers, repr=False)
    """The wrappers of actions that set limits of their own."""
    instance: str = ""
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)
    shutting_down: bool = False
    in_flight: int = 0
    draining: bool = False
    """Set while the instance is going away: responses say ``Connection: close``."""
    ready: bool = False
    """Set as the last step of startup, cleared when draining begins: what ``/readyz``
    answers (`not_ready`)."""
    drain_reason: str = ""
    """Why the instance drains (``shutting down``, ``recycling``), once it does."""
    observers: list[Callable[[RequestHandler], None]] = field(default_factory=list)
    """Called with each finished request's handler, after its access-log line."""
    on_draining: Callable[[str], None] | None = None
    """Called once, with the reason, when draining begins (the service manager's
    ``STOPPING=1``)."""
    _idle: asyncio.Event | None = None
    edge: BrowserEdge = field(init=False, repr=False)
    """The Host, Origin and Content-Type rules every request passes first."""

    def __post_init__(self) -> None:
        self.edge = BrowserEdge(self.config)

    def begin_draining(self, reason: str) -> None:
        """The instance is going away (SIGTERM, a recycle): no longer ready, and from now
        on every response says ``Connection: close``."""
        self.ready = False
        first = not self.draining
        self.draining = True
        self.drain_reason = self.drain_reason or reason  # the first reason stays
        if first and self.on_draining is not None:
            self.on_draining(self.drain_reason)

    def not_ready(self) -> str | None:
        """Why the instance is not ready (``starting``, ``draining: <reason>``); None if it is."""
        if self.ready:
            return None
        return f"draining: {self.drain_reason}" if self.draining else "starting"

    def request_started(self) -> None:
        """Count a request that is being served."""
        self.in_flight += 1
        if self._idle is not None:
            self._idle.clear()

    def request_finished(self) -> None:
        """Count a request whose response is complete (or whose client left)."""
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being served, up to ``timeout`` seconds."""
        if self.in_flight == 0:
            return True
        if self._idle is None:
            self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

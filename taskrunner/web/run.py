"""``POST /run``: run a command and answer with how it ended."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from taskrunner.process.engine import Command, CommandResult
from taskrunner.process.launcher import Reservation
from taskrunner.web.base import CommandHandler

log = logging.getLogger("taskrunner.http")


class RunHandler(CommandHandler):
    """``POST /run``: run a command and answer with how it ended."""

    scope = "run"
    command: Command | None = None
    client_gone = False
    reservation: Reservation | None = None

    async def post(self) -> None:
        if self._finished:
            return
        reservation = self.reservation = self.ctx.launcher.reserve(self.parse_command(),
                                                                  self.policy)
        if not reservation.ready.done():
            # A caller who leaves meanwhile cancels the reservation (on_connection_close):
            # it leaves the queue, and the wait ends.
            try:
                await reservation.wait()
            except asyncio.CancelledError:
                if not self.client_gone:
                    raise
            if self.client_gone:
                log.info("client left while queued; %s not started", self.program)
                self.set_status(499, "Client Closed Request")
                return
        self.command = reservation.start()
        result = await self.command.result
        self.exit_status = result.status
        if self.client_gone:
            # Logged like nginx's "client closed request"; nobody reads this response.
            self.set_status(499, "Client Closed Request")
            return
        self.write_json(result_body(result))

    def on_connection_close(self) -> None:
        # The caller went away: nobody will read the result, so end the command now.
        self.client_gone = True
        if self.reservation is not None:
            self.reservation.cancel()  # still queued: it leaves the queue; else nothing
        if self.command is not None and not self.command.result.done():
            log.info("client left; killing pid %s (%s)", self.command.pid, self.command.program)
            self.command.cancel()
        super().on_connection_close()


def result_body(result: CommandResult) -> dict[str, Any]:
    """The ``POST /run`` response body for ``result``."""
    return {
        "status": result.status,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "timed_out": result.timed_out,
        "oom_killed": result.oom_killed,
        "duration": round(result.duration, 6),
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "usage": None if result.usage is None else result.usage.to_json(),
    }

"""``POST /run``: run a command and answer with how it ended."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from taskrunner.process.engine import Command, CommandResult
from taskrunner.web.base import CommandHandler

log = logging.getLogger("taskrunner.http")


class RunHandler(CommandHandler):
    """``POST /run``: run a command and answer with how it ended."""

    scope = "run"
    command: Command | None = None
    client_gone = False
    launching: asyncio.Future[Command] | None = None

    async def post(self) -> None:
        if self._finished:
            return
        spec = self.parse_command()
        policy = self.policy
        self.command = self.ctx.launcher.start_now(spec, policy=policy)
        if self.command is None:
            # Wait for a slot in a task, so that a caller who leaves meanwhile leaves the
            # queue (on_connection_close cancels it).
            self.launching = asyncio.ensure_future(self.ctx.launcher.launch(spec, policy=policy))
            try:
                self.command = await self.launching
            except asyncio.CancelledError:
                if self.launching.cancelled():  # by on_connection_close: it never started
                    log.info("client left while queued; %s not started", self.program)
                    self.set_status(499, "Client Closed Request")
                    return
                raise
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
        if self.launching is not None and not self.launching.done():
            self.launching.cancel()
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
    }

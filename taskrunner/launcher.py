"""`Launcher`: the one door through which every command (``/run`` and jobs) is started.

Today it hands the spec to the engine. Policy that applies to every command — which
programs may run, resource limits, how many may run at once — belongs here, so the HTTP
handlers and the job registry never call the engine directly.
"""

from __future__ import annotations

from typing import Protocol

from taskrunner.engine import Command, CommandSpec, OutputListener, ProcessEngine
from taskrunner.errors import SpawnError


class CommandObserver(Protocol):
    """Told about every command the launcher starts or fails to start (e.g. metrics)."""

    def command_started(self, command: Command) -> None: ...

    def spawn_failed(self, spec: CommandSpec, error: SpawnError) -> None: ...


class Launcher:
    """Starts commands on behalf of handlers and jobs, applying the instance's policy."""

    def __init__(self, engine: ProcessEngine, observer: CommandObserver | None = None) -> None:
        self.engine = engine
        self.observer = observer

    async def launch(self, spec: CommandSpec, listener: OutputListener | None = None) -> Command:
        """Start ``spec``; raise a `TaskRunnerError` (e.g. `SpawnError`) if it may not or cannot."""
        try:
            command = self.engine.start(spec, listener)
        except SpawnError as exc:
            if self.observer is not None:
                self.observer.spawn_failed(spec, exc)
            raise
        if self.observer is not None:
            self.observer.command_started(command)
        return command

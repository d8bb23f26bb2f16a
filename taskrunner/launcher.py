"""`Launcher`: the one door through which every command (``/run`` and jobs) is started.

Today it hands the spec to the engine. Policy that applies to every command — which
programs may run, resource limits, how many may run at once — belongs here, so the HTTP
handlers and the job registry never call the engine directly.
"""

from __future__ import annotations

from taskrunner.engine import Command, CommandSpec, OutputListener, ProcessEngine


class Launcher:
    """Starts commands on behalf of handlers and jobs, applying the instance's policy."""

    def __init__(self, engine: ProcessEngine) -> None:
        self.engine = engine

    async def launch(self, spec: CommandSpec, listener: OutputListener | None = None) -> Command:
        """Start ``spec``; raise a `TaskRunnerError` (e.g. `SpawnError`) if it may not or cannot."""
        return self.engine.start(spec, listener)

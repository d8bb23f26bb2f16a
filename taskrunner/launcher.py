"""`Launcher`: the one door through which every command (``/run`` and jobs) is started.

Policy that applies to every command lives here, in this order, so the HTTP handlers and
the job registry never call the engine directly:

1. the allowlist (``--allow``): 403 for any other program; the real path it checked is
   what runs, through the wrapper too, with no second lookup of the name;
2. containment (``--limit-*``, ``--user``): the wrapper, after checking in this process
   that the program and ``cwd`` are there, so a missing program is a clean 422;
3. admission (``--max-running``, ``--max-queued``): wait for a slot, or 429;
4. the engine starts the command; its slot is freed when its result is in.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from taskrunner.admission import Admission
from taskrunner.allowlist import Allowlist
from taskrunner.engine import Command, CommandSpec, OutputListener, ProcessEngine
from taskrunner.errors import SpawnError, StartError
from taskrunner.limits import Containment


class CommandObserver(Protocol):
    """Told about every command the launcher starts or fails to start (e.g. metrics)."""

    def command_started(self, command: Command) -> None: ...

    def spawn_failed(self, spec: CommandSpec, error: StartError) -> None: ...


class Launcher:
    """Starts commands on behalf of handlers and jobs, applying the instance's policy."""

    def __init__(self, engine: ProcessEngine, allowlist: Allowlist | None = None,
                 containment: Containment | None = None,
                 admission: Admission | None = None,
                 observer: CommandObserver | None = None) -> None:
        self.engine = engine
        self.allowlist = allowlist
        self.containment = containment or Containment()
        self.admission = admission
        self.observer = observer

    async def launch(self, spec: CommandSpec, listener: OutputListener | None = None) -> Command:
        """Start ``spec``, waiting for a slot if none is free; raise a `TaskRunnerError`
        (e.g. `SpawnError`, `TooManyRequests`) if it may not or cannot start."""
        spec = self._checked(spec)
        if self.admission is not None and not self.admission.try_acquire():
            await self.admission.acquire()
        return self._spawn(spec, listener)

    def start_now(self, spec: CommandSpec,
                  listener: OutputListener | None = None) -> Command | None:
        """Start ``spec`` at once if a slot is free; None if it would have to wait (then
        `launch` it). The common case, without a task or an event-loop turn."""
        spec = self._checked(spec)
        if self.admission is not None and not self.admission.try_acquire():
            return None
        return self._spawn(spec, listener)

    def _checked(self, spec: CommandSpec) -> CommandSpec:
        try:
            return self.check(spec)
        except SpawnError as exc:
            if self.observer is not None:
                self.observer.spawn_failed(spec, exc)
            raise

    def _spawn(self, spec: CommandSpec, listener: OutputListener | None) -> Command:
        # The caller holds a slot (when there is admission): it is freed when the command
        # ends, or now if it cannot start.
        try:
            command = self.engine.start(spec, listener, self.containment.prefix)
        except BaseException as exc:
            if self.admission is not None:
                self.admission.release()
            if isinstance(exc, StartError) and self.observer is not None:
                self.observer.spawn_failed(spec, exc)
            raise
        if self.admission is not None:
            admission = self.admission
            command.on_finish(lambda _result: admission.release())
        if self.observer is not None:
            self.observer.command_started(command)
        return command

    def check(self, spec: CommandSpec) -> CommandSpec:
        """Apply the allowlist and the wrapper's checks; the spec to run, with its program
        resolved to a real path when either is in force.

        The program is resolved once, here, and that path is what runs: the allowlist's
        answer is never followed by a second lookup (the wrapper's or the engine's) that
        could find another file (see `taskrunner.allowlist` for why a path and not an fd).
        """
        if self.allowlist is None and not self.containment.active:
            return spec  # the fast path: the engine resolves the program itself
        env = self.engine.base_env if not spec.env else {**self.engine.base_env, **spec.env}
        program = spec.args[0]
        if self.allowlist is not None:
            self.allowlist.check_env(spec.env)
            real = self.allowlist.check(program, env, spec.cwd)
            self.containment.check_cwd(program, spec.cwd)
        else:
            real = self.containment.check(program, env, spec.cwd)
        return dataclasses.replace(spec, args=[real, *spec.args[1:]])

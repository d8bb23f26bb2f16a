"""`Launcher`: the one door through which every command (``/run`` and jobs) is started.

Policy that applies to every command lives here, in this order, so the HTTP handlers and
the job registry never call the engine directly:

1. the allowlist (``--allow``): 403 for any other program; the real path it checked is
   what runs, through the wrappers too, with no second lookup of the name;
2. containment (``--limit-*``, ``--user``, ``--sandbox``): the wrapper, after checking in
   this process that the program and ``cwd`` are there (and, in a sandbox, seen the same
   inside), so a missing program is a clean 422; a sandbox's work directory is made
   before the spawn and removed when the command has ended;
3. the caller's share (``max_running`` in ``--callers``): 429 at once beyond it;
4. admission (``--max-running``, ``--max-queued``): wait for a slot, or 429;
5. cgroup limits (``--memory-max``, ``--pids-max``, ``--cpu-max``): a cgroup from the pool,
   the same for every caller; it holds the whole command, its sandbox included;
6. the engine starts the command; its slot and share are freed, its work directory
   removed and its cgroup given back, when its result is in.

The first three are a `Policy`: the instance's by default, a caller's own when the request
names one (built from the callers file; see `taskrunner.web.callers`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

from taskrunner.errors import OutOfResources, SpawnError, StartError
from taskrunner.process.admission import Admission, Share
from taskrunner.process.allowlist import Allowlist
from taskrunner.process.cgroup_pool import CgroupPool, CommandCgroup
from taskrunner.process.containment import Containment
from taskrunner.process.engine import Command, CommandSpec, OutputListener, ProcessEngine
from taskrunner.process.environment import command_environment


class CommandObserver(Protocol):
    """Told about every command the launcher starts or fails to start (e.g. metrics)."""

    def command_started(self, command: Command) -> None: ...

    def spawn_failed(self, spec: CommandSpec, error: StartError) -> None: ...


@dataclass(frozen=True)
class Policy:
    """What may run and how, for the instance or for one caller: its allowlist (None: any
    program), its wrapper, and its share of the slots (None: no share of its own)."""

    allowlist: Allowlist | None = None
    containment: Containment = field(default_factory=Containment)
    share: Share | None = None


class Launcher:
    """Starts commands on behalf of handlers and jobs, applying the instance's policy."""

    def __init__(self, engine: ProcessEngine, allowlist: Allowlist | None = None,
                 containment: Containment | None = None,
                 admission: Admission | None = None,
                 observer: CommandObserver | None = None,
                 cgroups: CgroupPool | None = None) -> None:
        self.engine = engine
        self.cgroups = cgroups
        self.allowlist = allowlist
        self.containment = containment or Containment()
        # cgroup v2 enters the cgroup through a wrapper: then the program must be resolved
        # here, as for containment's wrappers.
        self._cgroup_wrapped = cgroups is not None and cgroups.hierarchy.version == 2
        self.admission = admission
        self.observer = observer

    @property
    def policy(self) -> Policy:
        """The instance's own policy: what a request that names no caller gets."""
        return Policy(self.allowlist, self.containment)

    async def launch(self, spec: CommandSpec, listener: OutputListener | None = None,
                     policy: Policy | None = None) -> Command:
        """Start ``spec`` under ``policy`` (default: the instance's), waiting for a slot if
        none is free; raise a `TaskRunnerError` (e.g. `SpawnError`, `TooManyRequests`) if
        it may not or cannot start."""
        policy = policy or self.policy
        spec = self._checked(spec, policy)
        share = policy.share
        if share is not None:
            share.take()
        try:
            if self.admission is not None and not self.admission.try_acquire():
                await self.admission.acquire()
        except BaseException:
            if share is not None:
                share.give()
            raise
        return self._spawn(spec, listener, policy)

    def start_now(self, spec: CommandSpec, listener: OutputListener | None = None,
                  policy: Policy | None = None) -> Command | None:
        """Start ``spec`` at once if a slot is free; None if it would have to wait (then
        `launch` it). The common case, without a task or an event-loop turn."""
        policy = policy or self.policy
        spec = self._checked(spec, policy)
        share = policy.share
        if share is not None:
            share.take()
        if self.admission is not None and not self.admission.try_acquire():
            if share is not None:
                share.give()
            return None
        return self._spawn(spec, listener, policy)

    def _checked(self, spec: CommandSpec, policy: Policy) -> CommandSpec:
        try:
            return self.check(spec, policy)
        except SpawnError as exc:
            if self.observer is not None:
                self.observer.spawn_failed(spec, exc)
            raise

    def _spawn(self, spec: CommandSpec, listener: OutputListener | None,
               policy: Policy) -> Command:
        # The caller holds a slot (when there is admission) and its share: both are freed
        # when the command ends, or now if it cannot start.
        share = policy.share
        containment = policy.containment
        work: str | None = None
        cgroup: CommandCgroup | None = None
        try:
            if self.cgroups is not None:
                cgroup = self.cgroups.acquire()
            if containment.sandbox is None:
                command = self.engine.start(spec, listener, containment.prefix, cgroup)
            else:
                try:
                    prefix, work = containment.enter(spec.cwd)
                except OSError as exc:
                    raise OutOfResources(f"cannot start {spec.args[0]!r} now: its sandbox's "
                                         f"work directory: {exc.strerror or exc}") from None
                # The sandbox changes directory itself (--chdir): the engine must not.
                command = self.engine.start(dataclasses.replace(spec, cwd=None), listener,
                                            prefix, cgroup)
        except BaseException as exc:
            containment.leave(work)
            if cgroup is not None:
                cgroup.close()
            if self.admission is not None:
                self.admission.release()
            if share is not None:
                share.give()
            if isinstance(exc, StartError) and self.observer is not None:
                self.observer.spawn_failed(spec, exc)
            raise
        if work is not None:
            command.on_finish(lambda _result: containment.leave(work))
        if self.admission is not None:
            admission = self.admission
            command.on_finish(lambda _result: admission.release())
        if share is not None:
            command.on_finish(lambda _result: share.give())
        if self.observer is not None:
            self.observer.command_started(command)
        return command

    def check(self, spec: CommandSpec, policy: Policy | None = None) -> CommandSpec:
        """Apply ``policy``'s allowlist and wrapper checks (default: the instance's); the
        spec to run, with its program resolved to a real path when either is in force, and
        the wrapper's environment (``--user``'s ``HOME``...) when it is not the instance's."""
        policy = policy or self.policy
        containment = policy.containment
        wrapped = containment.active or self._cgroup_wrapped
        if policy.allowlist is None and not wrapped:
            return spec  # the fast path: the engine resolves the program itself
        if containment.env and containment.env != self.containment.env:
            # The engine's base environment holds the instance's; the request's env wins.
            spec = dataclasses.replace(spec, env={**containment.env, **(spec.env or {})})
        env = command_environment(self.engine.base_env, spec.env)
        program = spec.args[0]
        if policy.allowlist is not None:
            # Resolved once: the allowlist's answer is what runs, through the wrappers too;
            # no second lookup of the name could find another file.
            policy.allowlist.check_env(spec.env)
            real = policy.allowlist.check(program, env, spec.cwd)
            if wrapped:
                real = containment.check_resolved(real, program, spec.cwd)
        else:
            real = containment.check(program, env, spec.cwd)
        return dataclasses.replace(spec, args=[real, *spec.args[1:]])

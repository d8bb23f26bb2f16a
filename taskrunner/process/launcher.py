"""`Launcher`: the one door through which every command (``/run`` and jobs) is started.

Every command goes through `Launcher.reserve`, which applies the policy, in this order, and
answers at once if the command may not run:

1. the allowlist (``--allow``): 403 for any other program; the real path it checked is
   what runs, through the wrappers too, with no second lookup of the name;
2. containment (``--limit-*``, ``--user``, ``--sandbox``): after checking in this process
   that the program and ``cwd`` are there (and, in a sandbox, seen the same inside), so a
   missing program is a clean 422;
3. the caller's share (``max_running`` in ``--callers``): 429 at once beyond it;
4. admission (``--max-running``, ``--max-queued``): a slot, or a place in the queue, or
   429; a command that has to wait has its program and ``cwd`` checked now (422), even
   where nothing above looked for them, rather than after its wait.

What it took is held by the `Reservation` it returns, and `Reservation.start` and
`Reservation.cancel` are the only ways back: ``start`` hands the slot and the share to the
command, which gives them back when it ends (at once if it cannot start); ``cancel`` gives
them back (or its place in the queue) without starting anything. ``start`` confines the
command (`taskrunner.process.confinement`: its wrappers, cgroup and sandbox work directory,
given back when it has ended) and the engine spawns it.

The first three are a `Policy`: the instance's by default, a caller's own when the request
names one (built from the callers file; see `taskrunner.web.callers`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Protocol

from taskrunner.errors import SpawnError, StartError
from taskrunner.process.admission import Admission, Share
from taskrunner.process.allowlist import Allowlist
from taskrunner.process.cgroup_pool import CgroupPool
from taskrunner.process.confinement import Confinement
from taskrunner.process.containment import Containment
from taskrunner.process.engine import (
    Command,
    CommandResult,
    CommandSpec,
    OutputListener,
    ProcessEngine,
)
from taskrunner.process.environment import command_environment
from taskrunner.process.phases import CommandTracer, Phases


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
        self.tracer: CommandTracer | None = None
        """Told of each command started with a trace context, and when each step was."""

    @property
    def policy(self) -> Policy:
        """The instance's own policy: what a request that names no caller gets."""
        return Policy(self.allowlist, self.containment)

    def reserve(self, spec: CommandSpec, policy: Policy | None = None) -> Reservation:
        """Check ``spec`` under ``policy`` (default: the instance's) and take what it needs
        to run: its caller's share, and a slot or a place in the queue.

        Raise at once if it may not run: `ProgramNotAllowed` (403), `SpawnError` (422: its
        program or ``cwd`` missing, or not visible in the sandbox), `TooManyRequests` (429:
        the caller's share used, or the queue full), `ServiceUnavailable` (503: stopping).
        Nothing is held then.
        """
        policy = policy or self.policy
        return Reservation(self, self._checked(spec, policy), policy)

    async def launch(self, spec: CommandSpec, listener: OutputListener | None = None,
                     policy: Policy | None = None) -> Command:
        """`reserve`, wait for a slot, and start: the command, or the error `reserve` or
        `Reservation.start` raised."""
        reservation = self.reserve(spec, policy)
        await reservation.wait()
        return reservation.start(listener)

    def _checked(self, spec: CommandSpec, policy: Policy) -> CommandSpec:
        # Apply the policy's allowlist and wrapper checks: the spec to run, with its program
        # resolved to a real path when either is in force, and the wrapper's environment
        # (--user's HOME...) when it is not the instance's.
        try:
            containment = policy.containment
            if self._fast(policy):
                return spec  # the engine resolves the program itself
            if containment.env and containment.env != self.containment.env:
                # The engine's base environment holds the instance's; the request's env wins.
                spec = dataclasses.replace(spec, env={**containment.env, **(spec.env or {})})
            # Only its PATH is read: the trace's variables cannot change it.
            env = command_environment(self.engine.base_env, spec.env)
            program = spec.args[0]
            if policy.allowlist is not None:
                # Resolved once: the allowlist's answer is what runs, through the wrappers
                # too; no second lookup of the name could find another file.
                policy.allowlist.check_env(spec.env)
                real = policy.allowlist.check(program, env, spec.cwd)
                if containment.active or self._cgroup_wrapped:
                    real = containment.check_resolved(real, program, spec.cwd)
            else:
                real = containment.check(program, env, spec.cwd)
            return dataclasses.replace(spec, args=[real, *spec.args[1:]])
        except SpawnError as exc:
            self._spawn_failed(spec, exc)
            raise

    def _check_waiting(self, spec: CommandSpec, policy: Policy) -> None:
        # A command that waits for a slot: where `_checked` left finding its program to the
        # spawn, which is later now, its program and cwd are checked while its caller still
        # waits for the answer.
        if self._fast(policy):
            try:
                env = command_environment(self.engine.base_env, spec.env)
                policy.containment.check(spec.args[0], env, spec.cwd)
            except SpawnError as exc:
                self._spawn_failed(spec, exc)
                raise

    def _fast(self, policy: Policy) -> bool:
        # No allowlist and no wrapper: nothing to check before the spawn.
        return (policy.allowlist is None and not policy.containment.active
                and not self._cgroup_wrapped)

    def _spawn_failed(self, spec: CommandSpec, error: StartError) -> None:
        if self.observer is not None:
            self.observer.spawn_failed(spec, error)


class Reservation:
    """One command's claim on the instance, from `Launcher.reserve` until `start` or
    `cancel`: its checks passed, its caller's share and a slot (or a place in the queue)
    held.

    `ready` is done once it holds a slot: at once when one was free, else when its turn
    comes (with `ServiceUnavailable` if the instance stops first). Then `start` runs the
    command, which gives the slot and the share back when it ends, or at once if it cannot
    start. `cancel` gives them back, or leaves the queue, without starting anything. Only
    one of the two counts; `cancel` after either does nothing.
    """

    def __init__(self, launcher: Launcher, spec: CommandSpec, policy: Policy) -> None:
        self.spec = spec
        """What will run: checked, its program resolved where the policy needs it."""
        self.policy = policy
        self._launcher = launcher
        self._admission = launcher.admission
        self._share = policy.share
        self._spent = False  # started or cancelled: what it held is no longer its own
        self.phases = Phases(time.time())
        if self._share is not None:
            self._share.take()  # else 429 now
        try:
            self.ready: asyncio.Future[None] = (
                self._admission.enqueue() if self._admission is not None  # else 429 now
                else _done_future())
        except BaseException:
            self._give_share()
            raise
        self._waited = not self.ready.done()  # its usage's "queued": 0 when a slot was free
        if self._waited:
            try:
                launcher._check_waiting(spec, policy)
            except BaseException:
                self.cancel()
                raise

    def __repr__(self) -> str:
        state = ("spent" if self._spent else "ready" if self.ready.done() else "queued")
        return f"<Reservation {state} program={self.spec.args[0]!r}>"

    async def wait(self) -> None:
        """Wait for a slot (at once if it holds one). If the wait fails (the instance is
        stopping: `ServiceUnavailable`) or is cancelled, the reservation is cancelled."""
        try:
            await self.ready
        except BaseException:
            self.cancel()
            raise

    def start(self, listener: OutputListener | None = None) -> Command:
        """Start the command with the slot the reservation holds (``ready`` done), telling
        ``listener`` its output; the slot and the share go back when it ends. If it cannot
        start (its confinement, the spawn, the instance stopping), raise the
        `TaskRunnerError`, with both given back."""
        if self._spent or not self.ready.done():
            raise RuntimeError(f"{self!r}: start needs a reservation that holds a slot")
        error = (asyncio.CancelledError() if self.ready.cancelled()
                 else self.ready.exception())
        if error is not None:
            self.cancel()  # no slot came (the instance is stopping): the share goes back
            raise error
        self._spent = True
        launcher = self._launcher
        spec = self.spec
        self.phases.spawning = time.time()
        queued = self.phases.spawning - self.phases.reserved if self._waited else 0.0
        try:
            confinement = Confinement.enter(spec, self.policy.containment, launcher.cgroups)
            try:
                command = launcher.engine.start(confinement.spec, listener,
                                                confinement.prefix, confinement.enclosure,
                                                queued)
            except BaseException:
                confinement.close()
                raise
        except BaseException as exc:
            self._release()
            if isinstance(exc, StartError):
                launcher._spawn_failed(spec, exc)
            raise
        command.on_finish(self._release)
        self.phases.spawned = time.time()
        if launcher.observer is not None:
            launcher.observer.command_started(command)
        if launcher.tracer is not None and spec.trace is not None:
            launcher.tracer.command_started(command, self.phases)
        return command

    def cancel(self) -> None:
        """Give back the share and the slot, or the place in the queue, without starting;
        nothing if `start` or `cancel` came first."""
        if self._spent:
            return
        self._spent = True
        if self._admission is not None:
            self._admission.leave(self.ready)  # the place, or the slot that reached it
        self._give_share()

    def _release(self, _result: CommandResult | None = None) -> None:
        # Its command ended, or could not start: its slot and share go back.
        if self._admission is not None:
            self._admission.release()
        self._give_share()

    def _give_share(self) -> None:
        if self._share is not None:
            self._share.give()


def _done_future() -> asyncio.Future[None]:
    future = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future

"""`Confinement`: every limit of one command, composed in one place.

A command's limits come from three rooms, each set up once (for the instance, or for a
caller): the exec wrappers of ``--limit-*`` and ``--user`` (`taskrunner.process.containment`),
``--sandbox`` (bubblewrap, `taskrunner.process.sandbox`) and the cgroup limits
(``--memory-max``, ``--pids-max``, ``--cpu-max``: `taskrunner.process.cgroup_pool`).
`Confinement.enter` takes what one command needs of them — a cgroup from the pool, a sandbox
work directory — and composes the one argument-list prefix that applies them all, outermost
first::

    [cgroup entry (v2)] [prlimit ... --] [bwrap ... --chdir CWD --] [setpriv ... --] args...

The cgroup's entry comes first so that everything after it, the sandbox included, is in the
cgroup; ``setpriv`` runs inside the sandbox (bubblewrap needs root's rights to set it up).

The engine puts `Confinement.prefix` before the command's arguments and holds the
`Confinement.enclosure` for as long as the command runs: it spawns inside `spawning` (v1
moves the spawning thread into the cgroup), `kill` reaches every process of the cgroup, and
`close`, once the command has ended, gives the cgroup back and removes the work directory.
Without a cgroup and a sandbox there is nothing to hold: ``enclosure`` is None and the
engine's path stays the fast one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

from taskrunner.errors import OutOfResources
from taskrunner.process.cgroup_pool import CgroupPool, CommandCgroup
from taskrunner.process.containment import Containment
from taskrunner.process.engine import CommandSpec, Enclosure
from taskrunner.process.usage import TreeUsage


class Confinement:
    """One command's limits, from just before its spawn until it has ended (or failed to
    start): the spec the engine runs, the whole prefix before its arguments, and what it
    holds meanwhile (its cgroup, its sandbox work directory)."""

    def __init__(self, spec: CommandSpec, containment: Containment,
                 cgroup: CommandCgroup | None = None, sandboxed: Sequence[str] = (),
                 work: str | None = None) -> None:
        self.spec = spec
        """What the engine runs: in a sandbox without ``cwd`` (bubblewrap's ``--chdir``
        changes directory, inside)."""
        self.prefix: tuple[str, ...] = (*(cgroup.prefix if cgroup is not None else ()),
                                        *containment.prefix, *sandboxed, *containment.inner)
        """Put before the command's arguments: every wrapper, outermost first."""
        self._containment = containment
        self._cgroup = cgroup
        self._work = work
        self._closed = False

    @classmethod
    def enter(cls, spec: CommandSpec, containment: Containment,
              cgroups: CgroupPool | None) -> Confinement:
        """Take what ``spec`` needs to run under ``containment`` and ``cgroups``' limits: a
        cgroup, a sandbox work directory. `OutOfResources` if either cannot be had now;
        nothing is held then."""
        cgroup = cgroups.acquire() if cgroups is not None else None
        sandbox = containment.sandbox
        if sandbox is None:
            return cls(spec, containment, cgroup)
        try:
            # A relative cwd is relative to the instance's, as without a sandbox.
            sandboxed, work = sandbox.enter(os.path.abspath(spec.cwd) if spec.cwd else None)
        except OSError as exc:
            if cgroup is not None:
                cgroup.close()
            raise OutOfResources(f"cannot start {spec.args[0]!r} now: its sandbox's work "
                                 f"directory: {exc.strerror or exc}") from None
        return cls(dataclasses.replace(spec, cwd=None), containment, cgroup, sandboxed, work)

    @property
    def enclosure(self) -> Enclosure | None:
        """What the engine holds while the command runs: this confinement when it holds
        something (a cgroup, a work directory), else None."""
        return self if self._cgroup is not None or self._work is not None else None

    def spawning(self) -> AbstractContextManager[None]:
        """The block the spawn happens in (a v1 cgroup is entered by the spawning thread)."""
        return self._cgroup.spawning() if self._cgroup is not None else nullcontext()

    def kill(self) -> None:
        """SIGKILL every process of the command's cgroup (the engine kills its group)."""
        if self._cgroup is not None:
            self._cgroup.kill()

    def usage(self) -> TreeUsage | None:
        """What the command's whole tree cost, from its cgroup (None without one); read
        once it has ended, before `close`."""
        return self._cgroup.usage() if self._cgroup is not None else None

    def close(self) -> bool:
        """The command has ended, or never started: give back its cgroup and remove its
        work directory, once; True if the memory limit killed one of its processes."""
        if self._closed:
            return False
        self._closed = True
        oom_killed = self._cgroup.close() if self._cgroup is not None else False
        if self._work is not None and self._containment.sandbox is not None:
            self._containment.sandbox.leave(self._work)
        return oom_killed

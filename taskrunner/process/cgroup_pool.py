"""`CgroupPool`: a cgroup for each command, kept for the next one when it is clean.

Making and removing a cgroup (a directory in each of three or four hierarchies on v1) costs
the instance more CPU per command than the spawn itself; most commands leave their cgroup
exactly as they found it, so the pool keeps up to ``keep`` idle cgroups and hands one out
again. One is reused only if nothing is left in it, the memory limit killed nothing there,
the CPU limit never throttled it (a thread moved into a throttled cgroup to spawn would
stall), and at most `REUSE_CHARGE` bytes (page cache a command left behind) are still
charged to it; otherwise it is removed, and a fresh one is made for a later command. A
cgroup still busy with processes that are dying is retried on later calls and at `close`.

`CommandCgroup` is the engine's `taskrunner.process.engine.Enclosure` for one command.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager

from taskrunner.config import MIB, Config
from taskrunner.errors import OutOfResources
from taskrunner.process.cgroups import Cgroup, CgroupLimits, Hierarchy, detect_hierarchy

log = logging.getLogger("taskrunner.cgroups")

REUSE_CHARGE = 1024 * 1024
"""Most bytes a cgroup may still have charged to it and be handed to the next command."""


class CommandCgroup:
    """The cgroup one command runs in, from its spawn until `close`."""

    def __init__(self, pool: CgroupPool, cgroup: Cgroup) -> None:
        self.cgroup = cgroup
        self.prefix: Sequence[str] = pool.hierarchy.wrapper(cgroup)
        self._pool = pool
        self._oom_before = cgroup.oom_kills()
        self._throttled_before = cgroup.throttled()
        self._closed = False

    def spawning(self) -> AbstractContextManager[None]:
        """The block around the spawn (v1 moves the spawning thread in and out)."""
        return self._pool.hierarchy.spawning(self.cgroup)

    def kill(self) -> None:
        """SIGKILL every process of the command, however it left its process group."""
        if not self._closed:
            try:
                self.cgroup.kill()
            except OSError as exc:
                log.error("%r: cannot kill its processes: %s", self.cgroup, exc)

    def close(self) -> bool:
        """The command has ended: give the cgroup back; True if the memory limit killed
        a process of the command."""
        if self._closed:
            return False
        self.kill()  # anything that survived its group and the exit
        self._closed = True
        try:
            oom = self.cgroup.oom_kills() > self._oom_before
            reusable = (not oom and self.cgroup.throttled() == self._throttled_before
                        and self.cgroup.memory_charged() <= REUSE_CHARGE
                        and not self.cgroup.procs())
        except OSError as exc:
            log.error("%r: cannot read its state: %s", self.cgroup, exc)
            oom, reusable = False, False
        self._pool.give_back(self.cgroup, reusable)
        return oom


class CgroupPool:
    """The per-command cgroups of one instance under ``hierarchy``'s parents."""

    def __init__(self, hierarchy: Hierarchy, keep: int = 64) -> None:
        self.hierarchy = hierarchy
        self.keep = keep
        self.made = 0  # cgroups made, for tests and curiosity
        self._idle: list[Cgroup] = []
        self._stale: list[Cgroup] = []  # removed but still busy: retried
        self._names = (f"{os.getpid()}-{n}" for n in itertools.count())

    def acquire(self) -> CommandCgroup:
        """A cgroup for one command; `OutOfResources` if the kernel will not make one."""
        if self._stale:
            self._retry_stale()
        if self._idle:
            return CommandCgroup(self, self._idle.pop())
        try:
            cgroup = self.hierarchy.make(next(self._names))
        except OSError as exc:
            raise OutOfResources(f"cannot make a cgroup for the command: {exc.strerror}; "
                                 "retry later") from None
        self.made += 1
        return CommandCgroup(self, cgroup)

    def give_back(self, cgroup: Cgroup, reusable: bool) -> None:
        """Keep ``cgroup`` for another command, or remove it."""
        if reusable and len(self._idle) < self.keep:
            self._idle.append(cgroup)
        else:
            self._remove(cgroup)

    def close(self, patience: float = 1.0) -> None:
        """Remove every cgroup of the pool and the parents this instance made; cgroups
        whose processes are still dying get up to ``patience`` seconds."""
        for cgroup in self._idle:
            self._remove(cgroup)
        self._idle.clear()
        deadline = time.monotonic() + patience
        while self._stale and time.monotonic() < deadline:
            time.sleep(0.01)  # SIGKILLed processes of a busy cgroup are exiting
            self._retry_stale()
        for cgroup in self._stale:
            log.warning("%r: still busy at exit, left in place", cgroup)
        self.hierarchy.close()

    @property
    def idle(self) -> int:
        """How many cgroups wait for a command."""
        return len(self._idle)

    def _remove(self, cgroup: Cgroup) -> None:
        try:
            if cgroup.remove():
                return
        except OSError as exc:
            log.error("%r: cannot remove it: %s", cgroup, exc)
            return
        cgroup.kill()
        self._stale.append(cgroup)

    def _retry_stale(self) -> None:
        still = []
        for cgroup in self._stale:
            with contextlib.suppress(OSError):
                if cgroup.remove():
                    continue
            still.append(cgroup)
        self._stale = still



def cgroups_from_config(config: Config) -> CgroupPool | None:
    """The pool for ``config``'s cgroup limits, or None without any; `StartupError` (one
    line) if they cannot be applied on this machine."""
    limits = CgroupLimits(memory_max=config.memory_max * MIB, pids_max=config.pids_max,
                          cpu_max=config.cpu_max)
    if not limits.active:
        return None
    hierarchy = detect_hierarchy(limits, config.cgroup_parent)
    log.info("cgroup limits (%s): %s", ", ".join(limits.controllers), hierarchy.describe())
    return CgroupPool(hierarchy)

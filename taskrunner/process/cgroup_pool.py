"""`CgroupPool`: a cgroup for each command, kept for the next one when it is clean.

Making and removing a cgroup (a directory in each of three or four hierarchies on v1) costs
the instance more CPU per command than the spawn itself; most commands leave their cgroup
exactly as they found it, so the pool keeps up to ``keep`` idle cgroups (the instance gives
``--max-running``: a wave of commands ending together would otherwise remove and remake
most of them) and hands one out again. One is reused only if nothing is left in it, the
memory limit killed nothing there, the CPU limit never throttled it (a thread moved into a
throttled cgroup to spawn would stall), and at most `REUSE_CHARGE` bytes (page cache a
command left behind) are still charged to it; otherwise it is removed, and a fresh one is
made for a later command. A cgroup still busy with processes that are dying is retried on
later calls and at `close`.

`CommandCgroup` is one command's: `taskrunner.process.confinement.Confinement` puts its
wrapper (v2) before the command's and holds it for the engine until the command has ended.
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
from taskrunner.errors import OutOfResources, StartupError
from taskrunner.process.cgroup_setup import detect_hierarchy, sweep_leftovers
from taskrunner.process.cgroups import Cgroup, CgroupLimits, Hierarchy, UsageMark
from taskrunner.process.usage import TreeUsage

log = logging.getLogger("taskrunner.cgroups")

REUSE_CHARGE = 1024 * 1024
"""Most bytes a cgroup may still have charged to it and be handed to the next command."""


class CommandCgroup:
    """The cgroup one command runs in, from its spawn until `close`."""

    def __init__(self, pool: CgroupPool, cgroup: Cgroup, counters: tuple[int, int],
                 mark: UsageMark) -> None:
        self.cgroup = cgroup
        self.prefix: Sequence[str] = pool.hierarchy.wrapper(cgroup)
        """The wrapper that enters the cgroup as the command starts (v2; empty on v1)."""
        self._pool = pool
        self._counters = counters  # (OOM kills, times throttled) before the command
        self._mark = mark  # where its usage counting began
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

    def probe(self) -> tuple[Cgroup, tuple[int, int]]:
        """Unused: the cgroup and its counters, to give back (a startup check)."""
        self._closed = True
        self._mark.close()
        return self.cgroup, self._counters

    def usage(self) -> TreeUsage | None:
        """What the command's tree cost, read after it ended and before `close`; None if
        the cgroup cannot be read."""
        if self._closed:
            return None
        try:
            return self.cgroup.usage(self._mark)
        except (OSError, ValueError) as exc:
            log.error("%r: cannot read its usage: %s", self.cgroup, exc)
            return None

    def close(self) -> bool:
        """The command has ended: give the cgroup back; True if the memory limit killed
        a process of the command."""
        if self._closed:
            return False
        self._closed = True
        self._mark.close()
        try:
            left = self.cgroup.procs()
            if left:  # anything that survived its group and the exit
                self.cgroup.kill()
            counters = (self.cgroup.oom_kills(), self.cgroup.throttled())
            oom = counters[0] > self._counters[0]
            reusable = (not left and not oom and counters[1] == self._counters[1]
                        and self.cgroup.memory_charged() <= REUSE_CHARGE)
        except OSError as exc:
            log.error("%r: cannot read its state: %s", self.cgroup, exc)
            oom, reusable, counters = False, False, self._counters
        self._pool.give_back(self.cgroup, counters if reusable else None)
        return oom


class CgroupPool:
    """The per-command cgroups of one instance under ``hierarchy``'s parents."""

    def __init__(self, hierarchy: Hierarchy, keep: int = 64) -> None:
        self.hierarchy = hierarchy
        self.keep = keep
        self.made = 0  # cgroups made, for tests and curiosity
        self._idle: list[tuple[Cgroup, tuple[int, int]]] = []  # with its counters
        self._stale: list[Cgroup] = []  # removed but still busy: retried
        self._names = (f"{os.getpid()}-{n}" for n in itertools.count())

    def acquire(self) -> CommandCgroup:
        """A cgroup for one command; `OutOfResources` if the kernel will not make one."""
        if self._stale:
            self._retry_stale()
        while self._idle:
            cgroup, counters = self._idle.pop()
            if os.path.isdir(cgroup.dirs[self.hierarchy.main]):  # not removed by hand
                try:
                    return CommandCgroup(self, cgroup, counters, cgroup.mark_usage(False))
                except OSError:
                    self._remove(cgroup)  # unreadable now: a fresh one instead
        for _ in range(100):
            try:
                cgroup = self.hierarchy.make(next(self._names))
                break
            except FileExistsError:
                continue  # another pool's, or left by an earlier process with this pid
            except OSError as exc:
                raise OutOfResources(f"cannot make a cgroup for the command: {exc.strerror}; "
                                     "retry later") from None
        else:
            raise OutOfResources("cannot make a cgroup for the command: every name taken")
        self.made += 1
        try:
            return CommandCgroup(self, cgroup, (cgroup.oom_kills(), cgroup.throttled()),
                                 cgroup.mark_usage(True))
        except OSError as exc:
            self._remove(cgroup)
            raise OutOfResources(f"cannot read a new cgroup: {exc.strerror}") from None

    def give_back(self, cgroup: Cgroup, counters: tuple[int, int] | None) -> None:
        """Keep ``cgroup`` (clean, with its OOM and throttle counters now) for another
        command, or remove it (``counters`` None)."""
        if counters is not None and len(self._idle) < self.keep:
            self._idle.append((cgroup, counters))
        else:
            self._remove(cgroup)

    def close(self, patience: float = 1.0) -> None:
        """Remove every cgroup of the pool and the parents this instance made; cgroups
        whose processes are still dying get up to ``patience`` seconds."""
        for cgroup, _ in self._idle:
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



def cgroups_from_config(config: Config, keep: int = 64) -> CgroupPool | None:
    """The pool for ``config``'s cgroup limits, keeping up to ``keep`` idle cgroups, or
    None without limits; `StartupError` (one line) if they cannot be applied here.

    With limits or without, the cgroups that dead instances left are swept first."""
    limits = CgroupLimits(memory_max=config.memory_max * MIB, pids_max=config.pids_max,
                          cpu_max=config.cpu_max)
    sweep_leftovers()
    if not limits.active:
        return None
    hierarchy = detect_hierarchy(limits, config.cgroup_parent)
    pool = CgroupPool(hierarchy, keep)
    try:
        pool.give_back(*pool.acquire().probe())  # the limits are written once, here
    except (OutOfResources, OSError) as exc:
        pool.close()
        reason = exc.message if isinstance(exc, OutOfResources) else exc.strerror
        raise StartupError(f"cgroup limits cannot be applied under "
                           f"{', '.join(hierarchy.parents.values())}: {reason}") from None
    log.info("cgroup limits (%s): %s", ", ".join(limits.controllers), hierarchy.describe())
    return pool

"""cgroups for commands (``--memory-max``, ``--pids-max``, ``--cpu-max``): make, limit, enter,
kill and remove one command's cgroup, in either layout.

Two layouts exist and both are supported, chosen once at startup by
`taskrunner.process.cgroup_setup.detect_hierarchy`:

* **v2** (one unified hierarchy, most hosts now): used when a cgroup2 mount offers every
  controller the limits need in the parent's ``cgroup.controllers``. A command is placed by
  an exec wrapper (`V2Hierarchy.wrapper`: ``sh -c 'echo 0 > .../cgroup.procs && exec "$@"'``,
  the command's words only ever ``"$@"``, never shell code); it is killed with
  ``cgroup.kill``; an OOM kill is counted in ``memory.events``.
* **v1** (one hierarchy per controller, as on this project's machines, where an empty
  cgroup2 mount sits beside them): a command's cgroup is one directory per controller with
  the same name, plus one in ``freezer`` when it is mounted, so that killing freezes the tree
  first (nothing forks between reading the pids and killing them). The command is born in
  its cgroups: the instance moves only its spawning thread in (v1 places threads one by one;
  a child is forked into its parent thread's cgroups), spawns, and moves back
  (`V1Hierarchy.spawning`) — no wrapper exec and no ``preexec_fn``. Memory charges follow
  the thread-group leader, so the instance's own memory is never charged to a command.

What a command's tree cost (`Hierarchy.usage`, from the mark `Hierarchy.mark_usage` set as it
was handed out): v1 resets ``memory.max_usage_in_bytes`` and ``cpuacct.usage`` (the
``cpuacct`` hierarchy is joined when it is mounted, alone or beside ``cpu``); v2 counts
``cpu.stat``'s ``usage_usec`` from the mark and reads ``memory.peak`` through an fd reset at
the mark (Linux 6.12), or, on older kernels, only in a cgroup made for this command (a
reused one's peak may be another command's).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from taskrunner.process.usage import TreeUsage

_CPU_PERIOD_US = 100_000  # the kernel's default CFS period


@dataclass(frozen=True)
class CgroupLimits:
    """The limits of every command's cgroup; 0 means none."""

    memory_max: int = 0  # bytes
    pids_max: int = 0
    cpu_max: float = 0.0  # CPUs

    @property
    def controllers(self) -> tuple[str, ...]:
        """The controllers these limits need."""
        wanted = (("memory", self.memory_max), ("pids", self.pids_max), ("cpu", self.cpu_max))
        return tuple(name for name, value in wanted if value)

    @property
    def active(self) -> bool:
        """True when any limit is set."""
        return bool(self.controllers)


def write(path: str, text: str) -> None:
    """Write ``text`` to a cgroup file in one system call, as the kernel expects."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read(path: str) -> str:
    """The text of a (small) cgroup file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


LEAF = "supervisor"
"""On cgroup v2, the leaf of its own cgroup an instance moves itself into (`enter_leaf`)."""


def enter_leaf(directory: str) -> str | None:
    """Move this process into ``directory``/`LEAF` when it is the only process in the v2
    cgroup ``directory``; the leaf, or None if it did not move.

    cgroup v2's "no internal processes" rule: a cgroup other than the root may hand its
    controllers down (``cgroup.subtree_control``) only while no process is in it. Under
    systemd's ``Delegate=yes`` the instance is alone in its service's cgroup, so it steps
    into a leaf of it and makes its commands' cgroups beside that leaf. With any other
    process there (a shell that started it) moving would not free the cgroup: it stays, and
    enabling the controllers fails with a line that says why.
    """
    procs = read(os.path.join(directory, "cgroup.procs")).split()
    if procs != [str(os.getpid())]:
        return None
    leaf = os.path.join(directory, LEAF)
    os.makedirs(leaf, exist_ok=True)
    write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))  # every thread goes with it
    return leaf


def _counter(path: str, key: str) -> int:
    """The value of ``key`` in a flat-keyed file (``memory.events``, ``cpu.stat``); 0 if absent."""
    for line in read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


@dataclass
class UsageMark:
    """Where a command's usage counting began in its cgroup (`Hierarchy.mark_usage`)."""

    cpu_ns: int = 0  # the CPU counter then (v2; v1 resets it)
    peak_fd: int = -1  # v2: memory.peak, reset through this fd; -1 if it could not be
    fresh: bool = False  # the cgroup was made for this command

    def close(self) -> None:
        """Let the fd go (once)."""
        if self.peak_fd >= 0:
            os.close(self.peak_fd)
            self.peak_fd = -1


def _pids(path: str) -> list[int]:
    return [int(line) for line in read(path).split()]


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Cgroup:
    """One command's cgroup: a directory per hierarchy it lives in, all named alike."""

    def __init__(self, hierarchy: Hierarchy, name: str) -> None:
        self.hierarchy = hierarchy
        self.name = name
        self.dirs = {key: os.path.join(parent, name) for key, parent in hierarchy.parents.items()}

    def __repr__(self) -> str:
        return f"<Cgroup {self.name} v{self.hierarchy.version}>"

    def procs(self) -> list[int]:
        """The pids in the cgroup (its processes, zombies excepted)."""
        return _pids(os.path.join(self.dirs[self.hierarchy.main], "cgroup.procs"))

    def oom_kills(self) -> int:
        """How many processes the memory limit has killed in this cgroup so far."""
        return self.hierarchy.oom_kills(self)

    def throttled(self) -> int:
        """How many times the CPU limit has throttled this cgroup so far (0 without one)."""
        return self.hierarchy.throttled(self)

    def memory_charged(self) -> int:
        """Bytes still charged to the cgroup (e.g. page cache its commands left)."""
        return self.hierarchy.memory_charged(self)

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, forks in flight included."""
        self.hierarchy.kill(self)

    def mark_usage(self, fresh: bool) -> UsageMark:
        """Start counting a new command's usage here (``fresh``: made for it)."""
        return self.hierarchy.mark_usage(self, fresh)

    def usage(self, mark: UsageMark) -> TreeUsage:
        """What the tree cost since ``mark``."""
        return self.hierarchy.usage(self, mark)

    def remove(self) -> bool:
        """Remove the cgroup's directories; False if one is still busy (retry later)."""
        busy = False
        for path in self.dirs.values():
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                busy = True
        return not busy


class Hierarchy:
    """Where the per-command cgroups live, and how to work them; see `V1Hierarchy`,
    `V2Hierarchy`."""

    version = 0
    main = ""  # the key of ``parents`` whose cgroup.procs lists the command's processes

    def __init__(self, limits: CgroupLimits, parents: dict[str, str], owned: bool) -> None:
        self.limits = limits
        self.parents = parents  # a key ("memory", ..., or "unified") -> the parent directory
        self.owned = owned  # made by this instance, removed at close
        self.locks: list[int] = []  # fds locking the parents, held while the instance lives

    def describe(self) -> str:
        """One phrase for the startup log line."""
        return f"cgroup v{self.version} under {', '.join(self.parents.values())}"

    def make(self, name: str) -> Cgroup:
        """Make the cgroup ``name`` with the limits; OSError if the kernel refuses."""
        cgroup = Cgroup(self, name)
        made: list[str] = []
        try:
            for path in cgroup.dirs.values():
                try:
                    os.mkdir(path)
                except FileNotFoundError:  # the parent was removed by hand: make it again
                    os.makedirs(path)
                made.append(path)
            self._set_limits(cgroup)
        except BaseException:
            for path in made:  # only ours: a name taken elsewhere is not removed
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            raise
        return cgroup

    def wrapper(self, cgroup: Cgroup) -> Sequence[str]:
        """The argv prefix that puts a command into ``cgroup`` as it starts (v2 only)."""
        return ()

    @contextlib.contextmanager
    def spawning(self, cgroup: Cgroup) -> Iterator[None]:
        """Within this block, a child spawned by this thread is born in ``cgroup`` (v1)."""
        yield

    def close(self) -> None:
        """Remove the parents this instance made, then let their locks go."""
        if self.owned:
            for path in self.parents.values():
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        for fd in self.locks:
            os.close(fd)
        self.locks.clear()

    def oom_kills(self, cgroup: Cgroup) -> int:
        raise NotImplementedError

    def throttled(self, cgroup: Cgroup) -> int:
        raise NotImplementedError

    def memory_charged(self, cgroup: Cgroup) -> int:
        raise NotImplementedError

    def kill(self, cgroup: Cgroup) -> None:
        raise NotImplementedError

    def mark_usage(self, cgroup: Cgroup, fresh: bool) -> UsageMark:
        raise NotImplementedError

    def usage(self, cgroup: Cgroup, mark: UsageMark) -> TreeUsage:
        raise NotImplementedError

    def _set_limits(self, cgroup: Cgroup) -> None:
        raise NotImplementedError


class V2Hierarchy(Hierarchy):
    """The unified hierarchy: one directory per command; placed by an exec wrapper."""

    version = 2
    main = "unified"

    def __init__(self, limits: CgroupLimits, parents: dict[str, str], owned: bool,
                 shell: str = "/bin/sh") -> None:
        super().__init__(limits, parents, owned)
        self.shell = shell

    def wrapper(self, cgroup: Cgroup) -> Sequence[str]:
        procs = os.path.join(cgroup.dirs["unified"], "cgroup.procs")
        # The path is the instance's own; the command's words are only ever "$@".
        return (self.shell, "-c", f"echo 0 > '{procs}' && exec \"$@\"", "taskrunner-cgroup")

    def _set_limits(self, cgroup: Cgroup) -> None:
        path = cgroup.dirs["unified"]
        if self.limits.memory_max:
            write(os.path.join(path, "memory.max"), str(self.limits.memory_max))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting
                write(os.path.join(path, "memory.swap.max"), "0")
        if self.limits.pids_max:
            write(os.path.join(path, "pids.max"), str(self.limits.pids_max))
        if self.limits.cpu_max:
            quota = round(self.limits.cpu_max * _CPU_PERIOD_US)
            write(os.path.join(path, "cpu.max"), f"{quota} {_CPU_PERIOD_US}")

    def oom_kills(self, cgroup: Cgroup) -> int:
        if not self.limits.memory_max:
            return 0
        return _counter(os.path.join(cgroup.dirs["unified"], "memory.events"), "oom_kill")

    def throttled(self, cgroup: Cgroup) -> int:
        if not self.limits.cpu_max:
            return 0
        return _counter(os.path.join(cgroup.dirs["unified"], "cpu.stat"), "nr_throttled")

    def memory_charged(self, cgroup: Cgroup) -> int:
        if not self.limits.memory_max:
            return 0
        return int(read(os.path.join(cgroup.dirs["unified"], "memory.current")))

    def mark_usage(self, cgroup: Cgroup, fresh: bool) -> UsageMark:
        path = cgroup.dirs["unified"]
        mark = UsageMark(_counter(os.path.join(path, "cpu.stat"), "usage_usec") * 1000,
                         fresh=fresh)
        if self.limits.memory_max:
            fd = os.open(os.path.join(path, "memory.peak"), os.O_RDWR | os.O_CLOEXEC)
            try:
                os.write(fd, b"reset\n")  # this fd's peak starts now (Linux 6.12)
                mark.peak_fd = fd
            except OSError:
                os.close(fd)
        return mark

    def usage(self, cgroup: Cgroup, mark: UsageMark) -> TreeUsage:
        path = cgroup.dirs["unified"]
        cpu_ns = _counter(os.path.join(path, "cpu.stat"), "usage_usec") * 1000 - mark.cpu_ns
        peak: int | None = None
        if mark.peak_fd >= 0:
            peak = int(os.pread(mark.peak_fd, 64, 0))
        elif self.limits.memory_max and mark.fresh:
            peak = int(read(os.path.join(path, "memory.peak")))
        return TreeUsage(memory_peak=peak, cpu_total=max(cpu_ns, 0) / 1e9)

    def kill(self, cgroup: Cgroup) -> None:
        # cgroup.kill (Linux 5.14) kills the whole tree atomically, forks in flight included.
        write(os.path.join(cgroup.dirs["unified"], "cgroup.kill"), "1")


class V1Hierarchy(Hierarchy):
    """One hierarchy per controller: a directory of the same name in each; placed by moving
    the spawning thread in and out around the spawn."""

    version = 1

    def __init__(self, limits: CgroupLimits, parents: dict[str, str], owned: bool,
                 homes: dict[str, str]) -> None:
        super().__init__(limits, parents, owned)
        self.homes = homes  # controller -> the directory this process's threads live in
        self.main = "freezer" if "freezer" in parents else next(iter(parents))
        self._cpuacct: str | None = None  # the key whose directory has cpuacct.usage
        self._cpuacct_found = False

    def describe(self) -> str:
        kill = "freeze and kill" if "freezer" in self.parents else "kill (no freezer)"
        return f"{super().describe()}; {kill}"

    @contextlib.contextmanager
    def spawning(self, cgroup: Cgroup) -> Iterator[None]:
        # "0" names the writing thread itself: the kernel then moves it without taking the
        # global threadgroup lock, whose writers wait for an RCU grace period (milliseconds
        # on a busy machine, on the event loop's thread); a tid would take it.
        moved: list[str] = []
        try:
            for key, path in cgroup.dirs.items():
                write(os.path.join(path, "tasks"), "0")
                moved.append(key)
            yield
        finally:
            for key in moved:
                write(os.path.join(self.homes[key], "tasks"), "0")

    def _set_limits(self, cgroup: Cgroup) -> None:
        if self.limits.memory_max:
            path = cgroup.dirs["memory"]
            write(os.path.join(path, "memory.limit_in_bytes"), str(self.limits.memory_max))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting
                write(os.path.join(path, "memory.memsw.limit_in_bytes"),
                       str(self.limits.memory_max))
        if self.limits.pids_max:
            write(os.path.join(cgroup.dirs["pids"], "pids.max"), str(self.limits.pids_max))
        if self.limits.cpu_max:
            path = cgroup.dirs["cpu"]
            write(os.path.join(path, "cpu.cfs_period_us"), str(_CPU_PERIOD_US))
            write(os.path.join(path, "cpu.cfs_quota_us"),
                   str(round(self.limits.cpu_max * _CPU_PERIOD_US)))

    def oom_kills(self, cgroup: Cgroup) -> int:
        if not self.limits.memory_max:
            return 0
        return _counter(os.path.join(cgroup.dirs["memory"], "memory.oom_control"), "oom_kill")

    def throttled(self, cgroup: Cgroup) -> int:
        if not self.limits.cpu_max:
            return 0
        return _counter(os.path.join(cgroup.dirs["cpu"], "cpu.stat"), "nr_throttled")

    def memory_charged(self, cgroup: Cgroup) -> int:
        if not self.limits.memory_max:
            return 0
        return int(read(os.path.join(cgroup.dirs["memory"], "memory.usage_in_bytes")))

    def mark_usage(self, cgroup: Cgroup, fresh: bool) -> UsageMark:
        # Both counters are the cgroup's own: reset for each command (a write each).
        if "memory" in cgroup.dirs:
            write(os.path.join(cgroup.dirs["memory"], "memory.max_usage_in_bytes"), "0")
        cpuacct = self._cpuacct_key(cgroup)
        if cpuacct is not None:
            write(os.path.join(cgroup.dirs[cpuacct], "cpuacct.usage"), "0")
        return UsageMark(fresh=fresh)

    def usage(self, cgroup: Cgroup, mark: UsageMark) -> TreeUsage:
        peak = None
        if "memory" in cgroup.dirs:
            peak = int(read(os.path.join(cgroup.dirs["memory"], "memory.max_usage_in_bytes")))
        cpu = None
        cpuacct = self._cpuacct_key(cgroup)
        if cpuacct is not None:
            cpu = int(read(os.path.join(cgroup.dirs[cpuacct], "cpuacct.usage"))) / 1e9
        return TreeUsage(memory_peak=peak, cpu_total=cpu)

    def _cpuacct_key(self, cgroup: Cgroup) -> str | None:
        # cpuacct has a hierarchy of its own, or shares cpu's ("cpu,cpuacct"): looked up once.
        if not self._cpuacct_found:
            self._cpuacct_found = True
            for key in ("cpuacct", "cpu"):
                if key in cgroup.dirs and os.path.exists(
                        os.path.join(cgroup.dirs[key], "cpuacct.usage")):
                    self._cpuacct = key
                    break
        return self._cpuacct

    def kill(self, cgroup: Cgroup) -> None:
        procs = os.path.join(cgroup.dirs[self.main], "cgroup.procs")
        pids = _pids(procs)
        if not pids:
            return  # the common case: the tree has already gone
        if "freezer" not in self.parents:
            # Without a freezer, kill until the list is empty: each round kills what forked.
            for _ in range(100):
                _kill_pids(pids)
                pids = _pids(procs)
                if not pids:
                    return
            return
        state = os.path.join(cgroup.dirs["freezer"], "freezer.state")
        write(state, "FROZEN")
        try:
            # While FREEZING a task may still fork: kill what is listed until all is frozen.
            for _ in range(1000):
                _kill_pids(pids)
                if read(state).strip() == "FROZEN":
                    _kill_pids(_pids(procs))
                    break
                pids = _pids(procs)
        finally:
            write(state, "THAWED")  # the SIGKILLs are delivered as the tasks thaw

"""cgroups for commands (``--memory-max``, ``--pids-max``, ``--cpu-max``): find the hierarchy,
make, limit, kill and remove one command's cgroup.

Two layouts exist and both are supported, chosen once at startup by `detect_hierarchy`:

* **v2** (one unified hierarchy, most hosts now): used when a cgroup2 mount offers every
  controller the limits need in the parent's ``cgroup.controllers``. A command is placed by
  an exec wrapper (`V2Hierarchy.prefix`: ``sh -c 'echo 0 > .../cgroup.procs && exec "$@"'``,
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

The parent of the per-command cgroups is ``--cgroup-parent`` (a cgroup path such as
``/taskrunner``, the same in every hierarchy; made if missing, kept at exit), or else
``taskrunner-<pid>`` made under the instance's own cgroup and removed at exit. A requested
limit that cannot be applied is a `StartupError` with one line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from taskrunner.errors import StartupError

log = logging.getLogger("taskrunner.cgroups")

_CPU_PERIOD_US = 100_000  # the kernel's default CFS period
_INSTANCE_NAME = re.compile(r"taskrunner-(\d+)")  # an instance's own parent
_COMMAND_NAME = re.compile(r"(\d+)-\d+")  # one command's cgroup: the instance's pid, a number


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


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


def _counter(path: str, key: str) -> int:
    """The value of ``key`` in a flat-keyed file (``memory.events``, ``cpu.stat``); 0 if absent."""
    for line in _read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _pids(path: str) -> list[int]:
    return [int(line) for line in _read(path).split()]


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

    @property
    def prefix(self) -> Sequence[str]:
        """The argv prefix that places a command in ``cgroup`` (v2), or none (v1)."""
        return ()

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
        """Remove the parents this instance made."""
        if self.owned:
            for path in self.parents.values():
                with contextlib.suppress(OSError):
                    os.rmdir(path)

    def oom_kills(self, cgroup: Cgroup) -> int:
        raise NotImplementedError

    def throttled(self, cgroup: Cgroup) -> int:
        raise NotImplementedError

    def memory_charged(self, cgroup: Cgroup) -> int:
        raise NotImplementedError

    def kill(self, cgroup: Cgroup) -> None:
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
            _write(os.path.join(path, "memory.max"), str(self.limits.memory_max))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting
                _write(os.path.join(path, "memory.swap.max"), "0")
        if self.limits.pids_max:
            _write(os.path.join(path, "pids.max"), str(self.limits.pids_max))
        if self.limits.cpu_max:
            quota = round(self.limits.cpu_max * _CPU_PERIOD_US)
            _write(os.path.join(path, "cpu.max"), f"{quota} {_CPU_PERIOD_US}")

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
        return int(_read(os.path.join(cgroup.dirs["unified"], "memory.current")))

    def kill(self, cgroup: Cgroup) -> None:
        # cgroup.kill (Linux 5.14) kills the whole tree atomically, forks in flight included.
        _write(os.path.join(cgroup.dirs["unified"], "cgroup.kill"), "1")


class V1Hierarchy(Hierarchy):
    """One hierarchy per controller: a directory of the same name in each; placed by moving
    the spawning thread in and out around the spawn."""

    version = 1

    def __init__(self, limits: CgroupLimits, parents: dict[str, str], owned: bool,
                 homes: dict[str, str]) -> None:
        super().__init__(limits, parents, owned)
        self.homes = homes  # controller -> the directory this process's threads live in
        self.main = "freezer" if "freezer" in parents else next(iter(parents))

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
                _write(os.path.join(path, "tasks"), "0")
                moved.append(key)
            yield
        finally:
            for key in moved:
                _write(os.path.join(self.homes[key], "tasks"), "0")

    def _set_limits(self, cgroup: Cgroup) -> None:
        if self.limits.memory_max:
            path = cgroup.dirs["memory"]
            _write(os.path.join(path, "memory.limit_in_bytes"), str(self.limits.memory_max))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting
                _write(os.path.join(path, "memory.memsw.limit_in_bytes"),
                       str(self.limits.memory_max))
        if self.limits.pids_max:
            _write(os.path.join(cgroup.dirs["pids"], "pids.max"), str(self.limits.pids_max))
        if self.limits.cpu_max:
            path = cgroup.dirs["cpu"]
            _write(os.path.join(path, "cpu.cfs_period_us"), str(_CPU_PERIOD_US))
            _write(os.path.join(path, "cpu.cfs_quota_us"),
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
        return int(_read(os.path.join(cgroup.dirs["memory"], "memory.usage_in_bytes")))

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
        _write(state, "FROZEN")
        try:
            # While FREEZING a task may still fork: kill what is listed until all is frozen.
            for _ in range(1000):
                _kill_pids(pids)
                if _read(state).strip() == "FROZEN":
                    _kill_pids(_pids(procs))
                    break
                pids = _pids(procs)
        finally:
            _write(state, "THAWED")  # the SIGKILLs are delivered as the tasks thaw


def detect_hierarchy(limits: CgroupLimits, parent: str = "",
                     mountinfo: str = "/proc/self/mountinfo",
                     own: str = "/proc/self/cgroup") -> Hierarchy:
    """Find where ``limits`` can be applied (v2 first, then v1) and make the parent cgroup;
    `StartupError` with one line if they cannot be."""
    mounts = _cgroup_mounts(_read(mountinfo))
    memberships = _memberships(_read(own))
    wanted = limits.controllers
    owned = not parent
    name = f"taskrunner-{os.getpid()}"
    for mount, root in mounts.get("cgroup2", []):
        base = _in_mount(mount, root, parent or memberships.get("", "/"))
        available = _controllers(base)
        if set(wanted) <= available:
            directory = base if parent else os.path.join(base, name)
            return _v2(limits, directory, owned, wanted)
    missing = [c for c in wanted if c not in mounts]
    if missing:
        raise StartupError(f"cgroup limits need the {', '.join(missing)} controller(s), found "
                           "neither in cgroup v2 nor mounted as cgroup v1")
    parents: dict[str, str] = {}
    homes: dict[str, str] = {}
    for key in (*wanted, "freezer"):
        if key not in mounts:
            continue  # only the freezer is optional
        mount, root = mounts[key][0]
        homes[key] = _in_mount(mount, root, memberships.get(key, "/"))
        base = _in_mount(mount, root, parent) if parent else homes[key]
        parents[key] = base if parent else os.path.join(base, name)
    hierarchy = V1Hierarchy(limits, parents, owned, homes)
    for key in parents:
        sweep_stale(parents[key] if parent else homes[key],
                    _COMMAND_NAME if parent else _INSTANCE_NAME)
    _make_parents(hierarchy)
    return hierarchy


def _v2(limits: CgroupLimits, directory: str, owned: bool, wanted: Sequence[str]) -> Hierarchy:
    hierarchy = V2Hierarchy(limits, {"unified": directory}, owned,
                            os.path.realpath("/bin/sh"))
    if owned:
        sweep_stale(os.path.dirname(directory), _INSTANCE_NAME)
        if wanted:
            # Lets the instance's own cgroup hand the controllers down; refused (EBUSY)
            # unless it is the root or they are on already: then the error below says why.
            with contextlib.suppress(OSError):
                _write(os.path.join(os.path.dirname(directory), "cgroup.subtree_control"),
                       " ".join(f"+{c}" for c in wanted))
    else:
        sweep_stale(directory, _COMMAND_NAME)
    _make_parents(hierarchy)
    if wanted:
        try:
            _write(os.path.join(directory, "cgroup.subtree_control"),
                   " ".join(f"+{c}" for c in wanted))
        except OSError as exc:
            hierarchy.close()
            raise StartupError(
                f"cgroup v2: cannot enable {', '.join(wanted)} for commands under {directory}: "
                f"{exc.strerror}; give --cgroup-parent a cgroup delegated to this service "
                "with no processes of its own") from None
    return hierarchy


def sweep_stale(directory: str, pattern: re.Pattern[str] = _INSTANCE_NAME) -> int:
    """Remove the empty cgroups under ``directory`` that an instance no longer alive left
    (killed before it could: the watchdog kills process groups, not cgroups); how many.

    Only empty ones: a process still in one may belong to an instance of another PID
    namespace that merely looks dead from here.
    """
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or _alive(int(match.group(1))):
            continue
        path = os.path.join(directory, name)
        if pattern is _INSTANCE_NAME:
            removed += sweep_stale(path, _COMMAND_NAME)
        with contextlib.suppress(OSError):
            os.rmdir(path)
            removed += 1
    if removed and pattern is _INSTANCE_NAME:
        log.info("removed %s cgroups left by instances no longer running under %s",
                 removed, directory)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_parents(hierarchy: Hierarchy) -> None:
    for path in hierarchy.parents.values():
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            hierarchy.close()
            raise StartupError(f"cannot make the cgroup {path}: {exc.strerror}") from None


def _cgroup_mounts(mountinfo: str) -> dict[str, list[tuple[str, str]]]:
    """Controller (or "cgroup2") -> [(mount point, root within the hierarchy)]."""
    found: dict[str, list[tuple[str, str]]] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        sep = fields.index("-")
        fstype, options = fields[sep + 1], fields[sep + 3]
        root, point = fields[3], fields[4]
        if fstype == "cgroup2":
            found.setdefault("cgroup2", []).append((point, root))
        elif fstype == "cgroup":
            for option in options.split(","):
                if option in ("memory", "pids", "cpu", "freezer"):
                    found.setdefault(option, []).append((point, root))
    return found


def _memberships(text: str) -> dict[str, str]:
    """Controller ("" for v2) -> this process's cgroup path in that hierarchy."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            found[controller] = path
    return found


def _in_mount(mount: str, root: str, path: str) -> str:
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return os.path.join(mount, path.lstrip("/"))


def _controllers(directory: str) -> set[str]:
    try:
        return set(_read(os.path.join(directory, "cgroup.controllers")).split())
    except OSError:
        return set()

"""Finding where the commands' cgroups go: cgroup v2 or v1, the parent, and stale leftovers.

`detect_hierarchy` looks, once at startup, for cgroup v2 with every controller the limits
need available to the parent, then for cgroup v1 hierarchies holding them, and makes the
parent. The parent of the per-command cgroups is ``--cgroup-parent`` (a cgroup path such as
``/taskrunner``, the same in every hierarchy; made if missing, kept at exit), or else
``taskrunner-<pid>`` made under the instance's own cgroup and removed at exit. A requested
limit that cannot be applied is a `StartupError` with one line.

Which ``taskrunner-<pid>`` belongs to a live instance is not judged by its pid (pids repeat,
in containers above all): the instance holds an ``flock`` on its directory in every
hierarchy for as long as it lives, and the kernel drops the lock when the instance dies,
``kill -9`` included. `sweep_leftovers`, run by every instance at startup, cgroup limits or
not, removes the empty ``taskrunner-*`` cgroups whose lock it can take.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from collections.abc import Sequence

from taskrunner.errors import StartupError
from taskrunner.process.cgroups import (
    CgroupLimits,
    Hierarchy,
    V1Hierarchy,
    V2Hierarchy,
    enter_leaf,
    read,
    write,
)

log = logging.getLogger("taskrunner.cgroups")

_INSTANCE_NAME = re.compile(r"taskrunner-(\d+)(?:-\d+)?")  # an instance's own parent
_COMMAND_NAME = re.compile(r"(\d+)-\d+")  # one command's cgroup: the instance's pid, a number


def detect_hierarchy(limits: CgroupLimits, parent: str = "",
                     mountinfo: str = "/proc/self/mountinfo",
                     own: str = "/proc/self/cgroup") -> Hierarchy:
    """Find where ``limits`` can be applied (v2 first, then v1) and make the parent cgroup;
    `StartupError` with one line if they cannot be."""
    mounts = _cgroup_mounts(read(mountinfo))
    memberships = _memberships(read(own))
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
    used: set[str] = set()  # mount points: cpuacct mounted with cpu is one hierarchy
    for key in (*wanted, "freezer", "cpuacct"):
        if key not in mounts or mounts[key][0][0] in used:
            continue  # only the freezer and cpuacct (a command's CPU time) are optional
        mount, root = mounts[key][0]
        used.add(mount)
        homes[key] = _in_mount(mount, root, memberships.get(key, "/"))
        base = _in_mount(mount, root, parent) if parent else homes[key]
        parents[key] = base if parent else os.path.join(base, name)
    hierarchy = V1Hierarchy(limits, parents, owned, homes)
    if parent:
        for key in parents:
            sweep_stale(parents[key], _COMMAND_NAME)
    _make_parents(hierarchy)
    return hierarchy


def _v2(limits: CgroupLimits, directory: str, owned: bool, wanted: Sequence[str]) -> Hierarchy:
    hierarchy = V2Hierarchy(limits, {"unified": directory}, owned,
                            os.path.realpath("/bin/sh"))
    if owned:
        if wanted:
            own = os.path.dirname(directory)
            # Delegate=yes: alone in its service's cgroup, the instance first moves into a
            # leaf of it, so that the cgroup may hand its controllers down (a container's
            # PID 1 alone at the root of its cgroup namespace too: that root is no exception).
            with contextlib.suppress(OSError):
                leaf = enter_leaf(own)
                if leaf is not None:
                    log.info("cgroup v2: moved into %s, so that %s may hand %s down to the "
                             "commands' cgroups", leaf, own, ", ".join(wanted))
            # Lets the instance's own cgroup hand the controllers down; refused (EBUSY)
            # unless it is the root or they are on already: then the error below says why.
            with contextlib.suppress(OSError):
                write(os.path.join(own, "cgroup.subtree_control"),
                       " ".join(f"+{c}" for c in wanted))
    else:
        sweep_stale(directory, _COMMAND_NAME)
    _make_parents(hierarchy)
    directory = hierarchy.parents["unified"]  # taskrunner-<pid>-<n> if the name was held
    if wanted:
        try:
            write(os.path.join(directory, "cgroup.subtree_control"),
                   " ".join(f"+{c}" for c in wanted))
        except OSError as exc:
            hierarchy.close()
            raise StartupError(
                f"cgroup v2: cannot enable {', '.join(wanted)} for commands under {directory}: "
                f"{exc.strerror}; give --cgroup-parent a cgroup delegated to this service "
                "with no processes of its own") from None
    return hierarchy


def sweep_leftovers(mountinfo: str = "/proc/self/mountinfo",
                    own: str = "/proc/self/cgroup") -> int:
    """Remove the empty ``taskrunner-*`` cgroups that instances no longer alive left beside
    this process's own cgroup, in every hierarchy taskrunner uses; how many.

    Run at every start, with cgroup limits or without: an instance killed with ``kill -9``
    cannot remove its own. Where this instance may not remove them (not root), they stay.
    """
    try:
        mounts = _cgroup_mounts(read(mountinfo))
        memberships = _memberships(read(own))
    except OSError:
        return 0
    homes: set[str] = set()
    for key, found in mounts.items():
        for mount, root in found:
            homes.add(_in_mount(mount, root, memberships.get("" if key == "cgroup2" else key,
                                                              "/")))
    return sum(sweep_stale(home) for home in sorted(homes))


def sweep_stale(directory: str, pattern: re.Pattern[str] = _INSTANCE_NAME) -> int:
    """Remove the empty cgroups under ``directory`` that an instance no longer alive left
    (killed before it could: the watchdog kills process groups, not cgroups); how many.

    An instance's ``taskrunner-<pid>`` is stale when its lock is free (`hold_parent`), whatever
    its pid; then every empty cgroup in it goes too. A command's ``<pid>-<n>`` directly under
    a ``--cgroup-parent`` is judged by its pid. Only empty ones: a process still in one may
    belong to an instance of another PID namespace that merely looks dead from here.
    """
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        path = os.path.join(directory, name)
        if pattern is _INSTANCE_NAME:
            removed += _sweep_instance(path)
        elif not _alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.rmdir(path)
                removed += 1
    if removed and pattern is _INSTANCE_NAME:
        log.info("removed %s cgroups left by instances no longer running under %s",
                 removed, directory)
    return removed


def _sweep_instance(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0  # held: a live instance's, whatever its pid looks like from here
        removed = 0
        with os.scandir(path) as entries:
            children = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        for child in children:  # the dead instance's command cgroups
            with contextlib.suppress(OSError):
                os.rmdir(child)
                removed += 1
        with contextlib.suppress(OSError):
            os.rmdir(path)  # while locked: no instance can be taking it meanwhile
            removed += 1
        return removed
    except OSError:
        return 0
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def hold_parent(path: str) -> int:
    """Make ``path`` (an instance's own parent cgroup) if missing and lock it for as long as
    the returned fd is open; `BlockingIOError` if a live instance holds it."""
    for _ in range(100):
        os.makedirs(path, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # swept between the mkdir and the open: make it again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A sweeper may have removed it while we waited to open it: lock the one there.
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise OSError(f"{path} keeps disappearing")


def _make_parents(hierarchy: Hierarchy) -> None:
    if hierarchy.owned:
        _hold_parents(hierarchy)
        return
    for path in hierarchy.parents.values():
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            hierarchy.close()
            raise StartupError(f"cannot make the cgroup {path}: {exc.strerror}") from None


def _hold_parents(hierarchy: Hierarchy) -> None:
    # taskrunner-<pid>, or taskrunner-<pid>-<n> when a live instance (another PID
    # namespace's, or another pool of this process) holds that name.
    bases = {key: os.path.dirname(path) for key, path in hierarchy.parents.items()}
    for attempt in range(100):
        name = f"taskrunner-{os.getpid()}" + (f"-{attempt}" if attempt else "")
        hierarchy.parents.update({key: os.path.join(base, name) for key, base in bases.items()})
        try:
            for path in hierarchy.parents.values():
                hierarchy.locks.append(hold_parent(path))
            return
        except BlockingIOError:
            _let_go(hierarchy)  # never the held one: it is a live instance's
        except OSError as exc:
            _let_go(hierarchy)
            raise StartupError(f"cannot make the cgroup {path}: "
                               f"{exc.strerror or exc}") from None
    raise StartupError(f"cannot make a cgroup of this instance under "
                       f"{', '.join(bases.values())}: every name is held")


def _let_go(hierarchy: Hierarchy) -> None:
    # Remove the parents locked so far (ours now), then unlock them.
    for path, fd in zip(hierarchy.parents.values(), hierarchy.locks, strict=False):
        with contextlib.suppress(OSError):
            os.rmdir(path)
        os.close(fd)
    hierarchy.locks.clear()


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
                if option in ("memory", "pids", "cpu", "freezer", "cpuacct"):
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
        return set(read(os.path.join(directory, "cgroup.controllers")).split())
    except OSError:
        return set()

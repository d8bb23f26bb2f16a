"""Finding where the commands' cgroups go: cgroup v2 or v1, the parent, and stale leftovers.

`detect_hierarchy` looks, once at startup, for cgroup v2 with every controller the limits
need available to the parent, then for cgroup v1 hierarchies holding them, and makes the
parent. The parent of the per-command cgroups is ``--cgroup-parent`` (a cgroup path such as
``/taskrunner``, the same in every hierarchy; made if missing, kept at exit), or else
``taskrunner-<pid>`` made under the instance's own cgroup and removed at exit. A requested
limit that cannot be applied is a `StartupError` with one line.
"""

from __future__ import annotations

import contextlib
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
    read,
    write,
)

log = logging.getLogger("taskrunner.cgroups")

_INSTANCE_NAME = re.compile(r"taskrunner-(\d+)")  # an instance's own parent
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
                write(os.path.join(os.path.dirname(directory), "cgroup.subtree_control"),
                       " ".join(f"+{c}" for c in wanted))
    else:
        sweep_stale(directory, _COMMAND_NAME)
    _make_parents(hierarchy)
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
        return set(read(os.path.join(directory, "cgroup.controllers")).split())
    except OSError:
        return set()

"""The server under test as processes: who listens on a port, their tree, RSS and CPU.

Everything is read from ``/proc`` (Linux). "The server" is the set of processes that hold a
listening socket on the given ports (or the given pids) plus their descendants, taken once at
idle, so the commands the server spawns during a run are not counted as server memory.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

TICK = os.sysconf("SC_CLK_TCK")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state is [0], ppid [1], pgid [2])."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # the command name may contain spaces and parentheses; fields resume after the last ')'
    return text[text.rindex(")") + 2:].split()


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def listening_inodes(ports: Iterable[int]) -> set[str]:
    """Socket inodes of TCP sockets (v4 and v6) listening on any of ``ports``."""
    wanted = {f"{p:04X}" for p in ports}
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == _LISTEN and cols[1].rsplit(":", 1)[1] in wanted:
                        inodes.add(cols[9])
        except FileNotFoundError:
            continue
    return inodes


def pids_listening(ports: Iterable[int]) -> set[int]:
    """Processes holding a listening socket on any of ``ports`` (needs the same user or root)."""
    targets = {f"socket:[{i}]" for i in listening_inodes(ports)}
    found: set[int] = set()
    if not targets:
        return found
    for pid in _pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                    found.add(pid)
                    break
            except OSError:
                continue
    return found


def process_tree(roots: Iterable[int]) -> set[int]:
    """``roots`` and all their descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        try:
            children.setdefault(int(stat_fields(pid)[1]), []).append(pid)
        except (OSError, ValueError):
            continue
    tree: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, []))
    return tree


def rss_kib(pids: Iterable[int]) -> int:
    """Sum of VmRSS over ``pids``; processes that are gone count 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime+stime+cutime+cstime over ``pids``: includes the children they have reaped."""
    ticks = 0
    for pid in pids:
        try:
            ticks += sum(int(x) for x in stat_fields(pid)[11:15])
        except (OSError, ValueError):
            continue
    return ticks / TICK


def group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` exists that is not a zombie."""
    for pid in _pids():
        try:
            fields = stat_fields(pid)
        except (OSError, ValueError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def children_of(parent: int) -> list[int]:
    """Direct children of ``parent`` (zombies included)."""
    out = []
    for pid in _pids():
        try:
            if int(stat_fields(pid)[1]) == parent:
                out.append(pid)
        except (OSError, ValueError):
            continue
    return out


class RssSampler:
    """Samples the summed RSS of a fixed set of pids every ``period`` seconds, keeps the peak."""

    def __init__(self, pids: set[int], period: float = 0.2) -> None:
        self.pids = pids
        self.period = period
        self.peak_kib = 0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, rss_kib(self.pids))

    def _run(self) -> None:
        # Event.wait is the timer: the thread wakes for each sample and stops at once on exit
        while not self._halt.is_set():
            self.peak_kib = max(self.peak_kib, rss_kib(self.pids))
            self._halt.wait(self.period)

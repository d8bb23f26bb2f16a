"""`Usage`: what one command cost — its CPU time, its peak memory, its wait for a slot.

Where each figure comes from, and so what it covers:

* ``cpu_user``, ``cpu_system``, ``max_rss``: the ``rusage`` the kernel hands back when the
  engine reaps the command's main process with ``wait4`` (`taskrunner.process.spawn`;
  ``os.waitpid`` and ``Popen.poll`` drop it). It counts that process and every descendant
  it waited for (``RUSAGE_CHILDREN`` semantics; ``max_rss`` is the largest of them, not a
  sum): a shell's children, a sandbox's command (bubblewrap and ``setpriv`` wait for it),
  but not a daemonised grandchild nobody waited for.
* ``memory_peak``, ``cpu_total``: the command's cgroup's own counters, present only when
  cgroup limits are on (`taskrunner.process.cgroups`): the whole tree, daemonised
  grandchildren included; ``memory_peak`` counts page cache as the memory limit does.
* ``queued``: seconds from the reservation to the start (`taskrunner.process.launcher`):
  0 when a slot was free.

A command that never started has no usage at all (None where a result would carry one).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any

_KIB = 1024  # Linux reports ru_maxrss in KiB


@dataclass(frozen=True)
class TreeUsage:
    """A cgroup's figures for the whole tree of one command; None where not measured."""

    memory_peak: int | None = None  # bytes
    cpu_total: float | None = None  # seconds


@dataclass(frozen=True)
class Usage:
    """What one command cost; see the module docstring for what each figure covers."""

    cpu_user: float
    cpu_system: float
    max_rss: int
    queued: float = 0.0
    memory_peak: int | None = None
    cpu_total: float | None = None

    @classmethod
    def of(cls, rusage: resource.struct_rusage, queued: float = 0.0,
           tree: TreeUsage | None = None) -> Usage:
        """The usage of a reaped command from its ``rusage``, its wait and its cgroup's."""
        tree = tree or TreeUsage()
        return cls(cpu_user=rusage.ru_utime, cpu_system=rusage.ru_stime,
                   max_rss=rusage.ru_maxrss * _KIB, queued=max(queued, 0.0),
                   memory_peak=tree.memory_peak, cpu_total=tree.cpu_total)

    @property
    def cpu_seconds(self) -> float:
        """The best CPU figure there is: the cgroup's when it has one, else the rusage's."""
        return self.cpu_total if self.cpu_total is not None else self.cpu_user + self.cpu_system

    @property
    def memory_bytes(self) -> int:
        """The best peak-memory figure there is: the cgroup's when it has one, else
        ``max_rss``."""
        return self.memory_peak if self.memory_peak is not None else self.max_rss

    def to_json(self) -> dict[str, Any]:
        """The ``usage`` object of the API (the optional cgroup figures only when present)."""
        body: dict[str, Any] = {
            "cpu_user": round(self.cpu_user, 6),
            "cpu_system": round(self.cpu_system, 6),
            "max_rss": self.max_rss,
            "queued": round(self.queued, 6),
        }
        if self.memory_peak is not None:
            body["memory_peak"] = self.memory_peak
        if self.cpu_total is not None:
            body["cpu_total"] = round(self.cpu_total, 6)
        return body

"""The default connection cap: what the open-file limit leaves for client connections.

``--max-connections`` 0 means this default: the soft ``RLIMIT_NOFILE``, less `FD_RESERVE`
for the instance's own files, less `FDS_PER_COMMAND` for each of ``--max-running``
commands, so that the connections cannot take the descriptors the work they ask for needs.
"""

from __future__ import annotations

import resource

FD_RESERVE = 64
"""Descriptors kept for the instance's own files: listening socket, event loop, log, job
store, watchdog, /dev/null."""

FDS_PER_COMMAND = 4
"""Descriptors a running command holds besides its caller's connection: its stdout,
stderr and stdin pipes and its pidfd."""

MIN_CONNECTIONS = 16


def default_max_connections(max_running: int) -> int:
    """The default ``--max-connections`` for this process's open-file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(MIN_CONNECTIONS, soft - FD_RESERVE - FDS_PER_COMMAND * max_running)

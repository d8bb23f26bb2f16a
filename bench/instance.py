"""Starting and stopping the server under test (``--cmd``), leaving nothing behind.

The command runs through ``sh -c`` in a new session, so it leads a process group of its own;
stopping sends SIGTERM to that group (the server gets its ``--grace`` to finish commands),
then SIGKILL. The benchmark makes itself a child subreaper first, so anything the server
orphaned (a command in a session of its own) is re-parented to us, found, killed and reaped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from taskbench import procs

_PR_SET_CHILD_SUBREAPER = 36


def port_open(host: str, port: int) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def become_subreaper() -> None:
    """Make orphaned descendants re-parent to this process instead of init (Linux >= 3.4)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("bench: warning: PR_SET_CHILD_SUBREAPER failed; orphans cannot be swept",
              file=sys.stderr)


class Target:
    """A server started from a shell command line, in its own process group."""

    def __init__(self, cmd: str, cwd: Path, host: str, port: int, log_path: Path,
                 grace: float = 15.0) -> None:
        self.cmd, self.cwd, self.host, self.port = cmd, cwd, host, port
        self.log_path, self.grace = log_path, grace
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        """Start the command; refuse if its port is already taken (we would measure that)."""
        if port_open(self.host, self.port):
            raise SystemExit(f"bench: {self.host}:{self.port} is already in use; stop what "
                             "listens there, or drop --cmd to measure it as it is")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["sh", "-c", self.cmd], cwd=self.cwd,
                                     start_new_session=True, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def exited(self) -> int | None:
        """The start command's exit code if it has already ended (a failed start)."""
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> list[int]:
        """SIGTERM the group, wait up to ``grace``, SIGKILL; sweep orphans.

        Returns the pids of orphans that were still running after the group had gone (the
        server left them behind; they have been killed).
        """
        if self.proc is None:
            return []
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        for sig, wait in ((signal.SIGTERM, self.grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break  # the whole group is already gone
            # The leader (sh) may be gone while the server it started still shuts down: wait
            # for the group, not the leader. Nothing signals "group empty", so look every 50 ms.
            deadline = time.monotonic() + wait
            while procs.group_alive(pgid) and time.monotonic() < deadline:
                self.proc.poll()
                time.sleep(0.05)
            if not procs.group_alive(pgid):
                break
        self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
        leftovers = sweep_orphans()
        deadline = time.monotonic() + 10
        while port_open(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        return leftovers


def sweep_orphans() -> list[int]:
    """Kill (by group) and reap every child we did not start ourselves; return live ones."""
    alive = []
    for pid in procs.children_of(os.getpid()):
        try:
            fields = procs.stat_fields(pid)
        except OSError:
            continue
        if fields[0] != "Z":
            alive.append(pid)
            if int(fields[2]) != os.getpgrp():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(fields[2]), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return alive

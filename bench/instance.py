"""The one way the bench tool starts and stops a server under test, leaving nothing behind.

An `Instance` is a command line started in a new session, so it leads a process group of its
own, with its output in a log file. Its port is either known in advance (the load tool's
``--cmd`` serves ``--url``) or learned from the log's ``listening on HOST:PORT`` line (an
instance started with ``--port 0``, so that runs never collide on a port). Stopping sends
SIGTERM to the group (the server gets its ``--grace`` to finish commands), then SIGKILL,
and waits for the whole group. The load tool makes itself a child subreaper first, so
anything the server orphaned (a command in a session of its own) is re-parented to it,
found, killed and reaped by `sweep_orphans`.

`taskrunner` starts ``python -m taskrunner --port 0 FLAGS`` from a source tree (this
checkout, or an export of another commit) and returns it listening: what every experiment
that needs an instance uses.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from bench import procs

REPO = Path(__file__).resolve().parents[1]
_PR_SET_CHILD_SUBREAPER = 36
_LISTENING = re.compile(rb"listening on \S+:(\d+)")


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


class Instance:
    """A server started from an argument list, in its own session and process group.

    ``port`` is the port it will serve if known in advance (then `start` refuses a port
    that is already taken: we would measure whatever holds it), else None until
    `wait_listening` reads it from the log. With ``sweep``, stopping also kills and reaps
    whatever was re-parented to this process (see `become_subreaper`); off by default, as
    it would kill any other child of ours too. Usable as a context manager that stops it.
    """

    def __init__(self, argv: Sequence[str], log_path: Path, *, cwd: Path = REPO,
                 env: Mapping[str, str] | None = None, host: str = "127.0.0.1",
                 port: int | None = None, grace: float = 15.0, sweep: bool = False) -> None:
        self.argv, self.cwd, self.env = list(argv), cwd, env
        self.host, self.port = host, port
        self.log_path, self.grace, self.sweep = log_path, grace, sweep
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0  # the log is appended to: read only what this start wrote

    @property
    def pid(self) -> int:
        """The pid of the started process (the group's leader)."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> None:
        """Start the command; refuse if its known port is already in use."""
        if self.port is not None and port_open(self.host, self.port):
            raise SystemExit(f"bench: {self.host}:{self.port} is already in use; stop what "
                             "listens there first")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_start = self._log.tell()
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, start_new_session=True,
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT,
                                     env=None if self.env is None else dict(self.env))

    def exited(self) -> int | None:
        """The command's exit code if it has already ended (a failed start)."""
        return None if self.proc is None else self.proc.poll()

    def wait_listening(self, timeout: float = 30.0) -> int:
        """The port from the log's ``listening on`` line, once it is there; SystemExit if
        the command exits or ``timeout`` passes first (the instance is stopped then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Nothing signals "a line was logged": read the log again every 50 ms.
            if match := _LISTENING.search(self.log_path.read_bytes()[self._log_start:]):
                self.port = int(match.group(1))
                return self.port
            if self.exited() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"bench: the instance did not start; see {self.log_path}")

    def stop(self) -> list[int]:
        """SIGTERM the group, wait up to ``grace``, SIGKILL; with ``sweep``, sweep orphans;
        wait until a known port is free. Returns the pids of orphans still running after the
        group had gone (the server left them behind; they have been killed)."""
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
        leftovers = sweep_orphans() if self.sweep else []
        deadline = time.monotonic() + 10
        while (self.port is not None and port_open(self.host, self.port)
               and time.monotonic() < deadline):
            time.sleep(0.1)
        return leftovers

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def taskrunner(flags: Sequence[str], log_path: Path, source: Path = REPO,
               env: Mapping[str, str] | None = None, python: str = sys.executable) -> Instance:
    """Start ``python -m taskrunner --port 0 FLAGS`` from ``source`` (its package first on
    the path) with ``env`` added to ours, and return it once it listens (its ``port`` set).
    SystemExit if it has not within 30 s."""
    instance = Instance([python, "-m", "taskrunner", "--port", "0", *flags], log_path,
                        cwd=source, env={**os.environ, **(env or {}), "PYTHONPATH": str(source)})
    instance.start()
    instance.wait_listening()
    return instance


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

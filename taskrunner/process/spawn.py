"""Starting one child process, and the low-level process chores around it.

`spawn_child` starts an argument list in a new session with the given stdin, stdout and
stderr, and nothing else inherited, and returns its pid and a non-blocking reaper. The
reaper uses ``wait4`` on either path, so the kernel's ``rusage`` of the child (and of the
descendants it waited for) comes back with its status: ``os.waitpid`` and ``Popen.poll``
drop it.

``os.posix_spawnp`` with ``setsid`` (glibc: ``clone(CLONE_VM|CLONE_VFORK)``) is the fast
path: it spends less of the instance's CPU per spawn than `subprocess.Popen`'s Python-level
set-up. Popen is used only where posix_spawn cannot do the job: a ``cwd``, or a request
``env`` with its own ``PATH`` (posix_spawnp searches the service's PATH). Neither path takes
a ``preexec_fn`` (e.g. for ``PR_SET_PDEATHSIG``): it would force a full fork, several times
slower; see `taskrunner.process.watchdog` for what replaces a parent-death signal, and
`taskrunner.process.containment` for limits and ``--user``. The figures are in docs/bench.md.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
from collections.abc import Callable, Mapping
from functools import partial

Reaped = tuple[int, resource.struct_rusage]
"""A reaped child's exit status (negative for a signal) and its rusage."""

Reaper = Callable[[], "Reaped | None"]
"""Reap the child if it has exited: its `Reaped`, else None."""

# Python ignores SIGPIPE and a spawned child would inherit that: restore the defaults, as
# Popen's restore_signals does.
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def spawn_child(argv: list[str], env: Mapping[str, str], stdin: int, stdout: int, stderr: int,
                *, cwd: str | None = None, own_path: bool = False) -> tuple[int, Reaper]:
    """Start ``argv`` in a session of its own; raise OSError if it cannot start.

    ``own_path`` says that ``env`` carries a PATH of the caller's, to be searched for
    ``argv[0]`` instead of the service's.
    """
    if cwd is None and not own_path:
        pid = _posix_spawn(argv, env, stdin, stdout, stderr)
        return pid, partial(_wait4, pid)
    popen = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env,
                             cwd=cwd, close_fds=True, start_new_session=True)
    return popen.pid, partial(_wait4_popen, popen)


def _posix_spawn(argv: list[str], env: Mapping[str, str], stdin: int, stdout: int,
                 stderr: int) -> int:
    # Every fd Python opens is close-on-exec (PEP 446), so only these three reach the child.
    return os.posix_spawnp(
        argv[0], argv, env,
        file_actions=[(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, stdout, 1),
                      (os.POSIX_SPAWN_DUP2, stderr, 2)],
        setsid=True, setsigdef=_DEFAULT_SIGNALS, setsigmask=(),
    )


def _wait4(pid: int) -> Reaped | None:
    reaped, status, rusage = os.wait4(pid, os.WNOHANG)
    return (os.waitstatus_to_exitcode(status), rusage) if reaped else None


def _wait4_popen(popen: subprocess.Popen[bytes]) -> Reaped | None:
    # Reaped here, not by Popen.poll (no rusage): Popen is told, so that it never waits
    # for a pid that may have been reused.
    reaped = _wait4(popen.pid)
    if reaped is not None:
        popen.returncode = reaped[0]
    return reaped


def make_inherited_fds_private() -> None:
    """Mark every fd above 2 close-on-exec.

    posix_spawn closes nothing: the fds Python opens are close-on-exec already, but those
    handed down by whoever started this process are not. Called once, at start-up.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listdir's own fd, already closed
                os.set_inheritable(fd, False)


def kill_group(pgid: int) -> None:
    """SIGKILL process group ``pgid``; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)

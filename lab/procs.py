"""What scripts/stack started, found by what it is, and stopping it in order.

A pid file only says which pid a process once had: after supervisord was killed, or with a
run directory left from before a reboot, the pid may be free or belong to anything. So a
pid file is never trusted here; a process belongs to the stack of RUN_DIR when /proc says
so:

  supervisord  ``... supervisord -c RUN_DIR/supervisord.conf``
  instance     ``... -m taskrunner ... --recycle-lock RUN_DIR/recycle.lock`` (under
               supervisord, or orphaned after it died)
  watchdog     ``... -m taskrunner.process.watchdog ...`` whose parent is an instance
  nginx        ``nginx: master process ... -c RUN_DIR/nginx.conf``
  nginx-worker an ``nginx: ...`` process that is the master's child or, orphaned, holds a
               socket listening on the stack's port

Signals go through pidfds opened after the check (and checked again), so a pid reused in
the meantime is never hit.

    python -m lab.procs list RUN_DIR PORT   "role pid", one line each
    python -m lab.procs down RUN_DIR PORT   stop all of it; exit 1 if any is left

``down`` stops the instances first, while nginx still carries their answers: each drains
(finishes its commands in flight, up to its ``--grace``) and exits; then nginx stops
gracefully.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from dataclasses import dataclass

from taskrunner.deploy.settings import STOP_WAIT

INSTANCE_STOP = STOP_WAIT + 10.0
"""Seconds for supervisord and the instances to stop (supervisord.conf's stopwaitsecs,
itself above an instance's --grace, and a margin)."""
WATCHDOG_STOP = 5.0
NGINX_STOP = 10.0
KILL_WAIT = 5.0


@dataclass(frozen=True)
class Proc:
    """One process as /proc showed it."""

    pid: int
    ppid: int
    start: int
    """Start time in clock ticks since boot: with the pid, names the process for good."""
    argv: tuple[str, ...]

    @property
    def title(self) -> str:
        return " ".join(a for a in self.argv if a)


def _read(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = tuple(f.read().decode("utf-8", "replace").split("\0"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if fields[0] in ("Z", "X"):  # exited, only not yet reaped
        return None
    return Proc(pid, int(fields[1]), int(fields[19]), argv)


def processes() -> list[Proc]:
    """Every live process of the machine that /proc lets us read."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := _read(int(entry))) is not None:
            found.append(proc)
    return found


def _same_path(given: str, expected: str) -> bool:
    return os.path.realpath(given) == os.path.realpath(expected)


def _after(argv: tuple[str, ...], option: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == option:
            return argv[i + 1]
    return None


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except (FileNotFoundError, PermissionError):
        return False
    return any(link.startswith("socket:[") and link[8:-1] in inodes for link in links)


def find(run_dir: str, port: int) -> dict[str, list[Proc]]:
    """The stack's processes by role (see the module docstring)."""
    procs = processes()
    roles: dict[str, list[Proc]] = {r: [] for r in
                                    ("supervisord", "instance", "watchdog", "nginx",
                                     "nginx-worker")}
    conf = os.path.join(run_dir, "supervisord.conf")
    lock = os.path.join(run_dir, "recycle.lock")
    nginx_conf = os.path.join(run_dir, "nginx.conf")
    for p in procs:
        if any(a.endswith("supervisord") for a in p.argv[:3]):
            given = _after(p.argv, "-c") or _after(p.argv, "--configuration")
            if given and _same_path(given, conf):
                roles["supervisord"].append(p)
        elif "taskrunner" in p.argv and "-m" in p.argv:
            given = _after(p.argv, "--recycle-lock")
            if given and _same_path(given, lock):
                roles["instance"].append(p)
        elif p.title.startswith("nginx: master process"):
            words = tuple(p.title.split())
            given = _after(words, "-c")
            if given and _same_path(given, nginx_conf):
                roles["nginx"].append(p)
    instances = {p.pid for p in roles["instance"]}
    masters = {p.pid for p in roles["nginx"]}
    any_master = {p.pid for p in procs if p.title.startswith("nginx: master")}
    inodes: set[str] | None = None
    for p in procs:
        if "taskrunner.watchdog" in p.argv and p.ppid in instances:
            roles["watchdog"].append(p)
        elif p.title.startswith("nginx: ") and p.pid not in any_master:
            if p.ppid in masters:
                roles["nginx-worker"].append(p)
            elif p.ppid not in any_master:
                inodes = _listening_inodes(port) if inodes is None else inodes
                if _holds_socket(p.pid, inodes):  # orphaned: its master is gone
                    roles["nginx-worker"].append(p)
    return roles


class Handle:
    """A pidfd on a process checked to be the one `find` saw."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.fd: int | None = None
        with contextlib.suppress(ProcessLookupError):
            fd = os.pidfd_open(proc.pid)
            now = _read(proc.pid)
            if now is not None and now.start == proc.start:  # the same process, now held
                self.fd = fd
            else:
                os.close(fd)

    def gone(self) -> bool:
        if self.fd is None:
            return True
        return bool(select.select([self.fd], [], [], 0)[0])  # readable once it exits

    def signal(self, sig: int) -> None:
        if self.fd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.fd, sig)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def wait_gone(handles: list[Handle], timeout: float) -> list[Handle]:
    """Wait until every process of ``handles`` has exited, or ``timeout``; the ones left."""
    deadline = time.monotonic() + timeout
    left = [h for h in handles if not h.gone()]
    poller = select.poll()
    for h in left:
        assert h.fd is not None
        poller.register(h.fd, select.POLLIN)
    while left and (remaining := deadline - time.monotonic()) > 0:
        poller.poll(remaining * 1000)  # wakes when one of them exits
        for h in [h for h in left if h.gone()]:
            assert h.fd is not None
            poller.unregister(h.fd)
            left.remove(h)
    return left


def stop(handles: list[Handle], first: int | None, timeout: float, what: str,
         signalled: list[Handle] | None = None) -> None:
    """Send ``first`` to ``signalled`` (default: all), wait up to ``timeout`` for all of
    ``handles``, then SIGKILL the ones left."""
    for h in handles if signalled is None else signalled:
        if first is not None:
            h.signal(first)
    left = wait_gone(handles, timeout)
    if left:
        print(f"stack: {what} did not stop in {timeout:g}s: killing pid(s) "
              f"{', '.join(str(h.proc.pid) for h in left)}", file=sys.stderr)
        for h in left:
            h.signal(signal.SIGKILL)
        wait_gone(left, KILL_WAIT)


def down(run_dir: str, port: int) -> int:
    """Stop the stack of ``run_dir``: instances (drained) first, then nginx."""
    roles = find(run_dir, port)
    handles = {role: [Handle(p) for p in procs] for role, procs in roles.items()}
    try:
        supervisors = handles["supervisord"]
        # supervisord TERMs its instances, waits for each (stopwaitsecs) and exits; an
        # instance TERMed behind its back would be restarted. Orphans (supervisord died)
        # get the TERM themselves.
        managed = {h.proc.pid for h in supervisors if not h.gone()}
        orphans = [h for h in handles["instance"] if h.proc.ppid not in managed]
        stop(supervisors + handles["instance"], signal.SIGTERM, INSTANCE_STOP,
             "supervisord or an instance", signalled=supervisors + orphans)
        # A watchdog exits when its instance does (its pipe closes); SIGTERM it ignores.
        stop(handles["watchdog"], None, WATCHDOG_STOP, "a watchdog")
        # nginx last: QUIT lets its workers finish sending the answers they carry.
        # The master tells its workers; orphaned workers (their master was killed) are told
        # directly.
        masters = {h.proc.pid for h in handles["nginx"]}
        front = handles["nginx"] + handles["nginx-worker"]
        for h in front:
            if h.proc.pid in masters or h.proc.ppid not in masters:
                h.signal(signal.SIGQUIT)
        left = wait_gone(front, NGINX_STOP)
        stop(left, signal.SIGTERM, KILL_WAIT, "nginx")
    finally:
        for hs in handles.values():
            for h in hs:
                h.close()
    remaining = [(role, p.pid) for role, procs in find(run_dir, port).items() for p in procs]
    if remaining:
        print("stack: still running: " + ", ".join(f"{r} {pid}" for r, pid in remaining),
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[1] not in ("list", "down"):
        print("usage: python -m lab.procs list|down RUN_DIR PORT", file=sys.stderr)
        return 2
    run_dir, port = argv[2], int(argv[3])
    if argv[1] == "down":
        return down(run_dir, port)
    for role, procs in find(run_dir, port).items():
        for p in procs:
            print(role, p.pid)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

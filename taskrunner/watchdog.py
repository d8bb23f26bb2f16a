"""The watchdog: a companion process that kills the instance's commands if the instance dies.

Commands run in sessions of their own, so nothing the kernel does when the instance dies —
even by ``kill -9`` — reaches them. ``PR_SET_PDEATHSIG`` would, but it needs a
``preexec_fn`` or an exec wrapper, which costs the fast spawn path 2-5x (see
`taskrunner.engine`). Instead, at startup the instance starts one small process, the
watchdog, and shares two things with it:

* a table of live process groups, in a memory file (``memfd_create``) that the instance
  maps and the watchdog only reads at the end: the engine's ``on_spawn`` hook stores a
  command's group id in a free slot, ``on_reap`` zeroes it. A store into shared memory —
  no system call, no wake-up of the watchdog — costs well under a microsecond;
* a pipe, of which the instance holds the only write end and never writes. When the
  instance dies, however it dies, the kernel closes that end; the watchdog, blocked in
  ``read``, gets EOF, reads the table, SIGKILLs every group in it, and exits. After a clean
  shutdown the table is empty and it just exits.

A first version sent ``+PGID`` / ``-PGID`` lines over the pipe: 3 µs per command in the
instance, but two wake-ups of the watchdog per command, 55 µs of its CPU each command
(measured: 0.11 s of watchdog CPU per 2,000 spawns), which competes with the instance on a
small machine. The table costs the watchdog nothing until the end (figures in
README, "Security model").

The watchdog runs in a session of its own, so a signal sent to the instance's process group
(Ctrl-C, supervisord's ``stopasgroup`` / ``killasgroup``) does not reach it, and it ignores
SIGINT, SIGTERM and SIGHUP from birth: EOF (or SIGKILL) is its only way out. The write end
is close-on-exec and commands are spawned with ``close_fds``, so no command can keep it
waiting.

Not covered: a command whose instance is killed between ``Popen`` returning and the store
(a microsecond or so) is not in the table and survives, and so does a process that left its
group with ``setsid``. A group id in the table whose processes have all gone, and whose id
was taken by a new group in the moment between the instance's death and the watchdog's
kill, would be killed by mistake; the kernel does not reuse an id while its group exists.
"""

from __future__ import annotations

import array
import contextlib
import logging
import mmap
import os
import signal
import subprocess
import sys

from taskrunner.auth import scrub_env

log = logging.getLogger("taskrunner.watchdog")

_SLOT = 4  # bytes per slot: one native int, a process-group id, 0 when free
_IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Watchdog:
    """The instance's side: starts the watchdog process and keeps its table current."""

    def __init__(self, slots: int = 1024) -> None:
        self._table_fd = os.memfd_create("taskrunner-watchdog", os.MFD_CLOEXEC)
        os.ftruncate(self._table_fd, slots * _SLOT)
        self._table = mmap.mmap(self._table_fd, slots * _SLOT)
        self._slots: dict[int, int] = {}  # pgid -> slot
        self._free = list(range(slots - 1, -1, -1))
        read_end, self._pipe = os.pipe2(os.O_CLOEXEC)
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        try:
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                # -S: no site-packages to import; the package comes from PYTHONPATH.
                [sys.executable, "-S", "-m", "taskrunner.watchdog", str(self._table_fd)],
                stdin=read_end, env={**scrub_env(os.environ), "PYTHONPATH": python_path},
                close_fds=True, pass_fds=(self._table_fd,), start_new_session=True,
                preexec_fn=_ignore_signals,  # once per instance: the fork path is fine here
            )
        finally:
            os.close(read_end)
        log.info("watchdog pid %s is guarding this instance's commands", self.process.pid)

    @property
    def pid(self) -> int:
        """The watchdog's pid."""
        return self.process.pid

    def spawned(self, pgid: int) -> None:
        """Record that process group ``pgid`` is alive."""
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self._slots[pgid] = slot
        self._table[slot * _SLOT:(slot + 1) * _SLOT] = pgid.to_bytes(_SLOT, sys.byteorder)

    def reaped(self, pgid: int) -> None:
        """Record that process group ``pgid`` has been reaped."""
        slot = self._slots.pop(pgid, None)
        if slot is not None:
            self._table[slot * _SLOT:(slot + 1) * _SLOT] = bytes(_SLOT)
            self._free.append(slot)

    def _grow(self) -> None:
        old = len(self._table) // _SLOT
        os.ftruncate(self._table_fd, 2 * old * _SLOT)  # the new half reads as zeros
        self._table.resize(2 * old * _SLOT)
        self._free.extend(range(2 * old - 1, old - 1, -1))

    def close(self) -> None:
        """Let the watchdog go (after the engine has ended every command) and reap it."""
        if self._pipe >= 0:
            os.close(self._pipe)
            self._pipe = -1
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            log.warning("the watchdog (pid %s) did not exit; killing it", self.process.pid)
            self.process.kill()
            self.process.wait()
        self._table.close()
        os.close(self._table_fd)


def _ignore_signals() -> None:
    # Ignored signals stay ignored across exec: no window while Python starts up.
    for sig in _IGNORED:
        signal.signal(sig, signal.SIG_IGN)


def main() -> None:
    """The watchdog process: wait for EOF on stdin, then kill every group in the table
    (whose fd is the one argument)."""
    _ignore_signals()
    table_fd = int(sys.argv[1])
    while True:
        try:
            if not os.read(0, 4096):
                break
        except InterruptedError:
            continue
    table = array.array("i")
    table.frombytes(os.pread(table_fd, os.fstat(table_fd).st_size, 0))
    live = sorted({pgid for pgid in table if pgid > 0})
    for pgid in live:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(pgid, signal.SIGKILL)
    if live:
        sys.stderr.write(f"taskrunner watchdog: the instance died; killed {len(live)} "
                         f"command group(s): {' '.join(map(str, live))}\n")


if __name__ == "__main__":
    main()

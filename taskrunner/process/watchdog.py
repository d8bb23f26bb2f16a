"""The watchdog: a companion process that kills the instance's commands if the instance dies.

Commands run in sessions of their own, so nothing the kernel does when the instance dies —
even by ``kill -9`` — reaches them (``PR_SET_PDEATHSIG`` would reach only a command's first
process, not what it starts, and needs a ``preexec_fn`` on the fast spawn path). Instead, at
startup the instance starts one small process, the watchdog, and shares two things with it:

* a table of live process groups, in a memory file (``memfd_create``) that the instance
  maps and the watchdog only reads at the end: the engine's ``on_spawn`` hook stores a
  command's group id in a free slot, ``on_reap`` blanks it. A store into shared memory
  wakes nobody: the watchdog costs no CPU until the end;
* a pipe, of which the instance holds the only write end and never writes. When the
  instance dies, however it dies, the kernel closes that end; the watchdog, blocked in
  ``read``, gets EOF, reads the table, SIGKILLs every group in it, and exits. After a clean
  shutdown the table is empty and it just exits.

The watchdog is ``/bin/sh`` running ``watchdog.sh`` (``read``, ``kill`` and ``echo`` are shell
built-ins: it starts no other process), not a Python: it holds one small shell's memory
instead of an interpreter's. So the table is text the shell reads line by line: one slot is
8 bytes, a group id right-aligned in 7 characters (ids stop at ``PID_MAX_LIMIT``, 2**22)
and a newline, or 7 spaces and a newline when free. Each slot is written by one aligned
8-byte store, so a ``kill -9`` of the instance never leaves half a number behind.

The watchdog runs in a session of its own, so a signal sent to the instance's process group
(Ctrl-C, supervisord's ``stopasgroup`` / ``killasgroup``) does not reach it, and it ignores
SIGINT, SIGTERM and SIGHUP from birth (a shell cannot undo a signal ignored on entry): EOF
(or SIGKILL) is its only way out. Its environment is empty (no token). The write end is
close-on-exec, so no command can hold it open and keep the watchdog waiting.
The instance waits for the watchdog's ``ready`` before it serves: an instance whose
watchdog cannot read its table does not start. If the watchdog dies (someone kills it), the
instance notices through a pidfd and starts a new one on the same table at once.

Not covered: a command whose instance is killed between its spawn and the store (a
microsecond or so) is not in the table and survives, and so do a process that left its
group with ``setsid`` and the commands of an instance killed in the moment between its
watchdog's death and the replacement's start. A group id in the table whose processes have
all gone, and whose id was taken by a new group in the moment between the instance's death
and the watchdog's kill, would be killed by mistake; the kernel does not reuse an id while
its group exists.

This module imports nothing of the package.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import subprocess
import sys

from tornado.ioloop import IOLoop

log = logging.getLogger("taskrunner.watchdog")

_SLOT = 8  # bytes per slot: one aligned store (memoryview format "Q")
_FREE = b" " * (_SLOT - 1) + b"\n"
_FREE_WORD = int.from_bytes(_FREE, sys.byteorder)
_IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Package data, next to this module; small enough that the shell reads it whole at start.
_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watchdog.sh")


class WatchdogError(Exception):
    """The watchdog could not be started; the instance must not serve unguarded."""


class Watchdog:
    """The instance's side: starts the watchdog process and keeps its table current."""

    def __init__(self, slots: int = 1024, shell: str = "/bin/sh") -> None:
        self._shell = shell
        self._table_fd = os.memfd_create("taskrunner-watchdog", os.MFD_CLOEXEC)
        os.pwrite(self._table_fd, _FREE * slots, 0)
        self._table = mmap.mmap(self._table_fd, slots * _SLOT)
        self._words = memoryview(self._table).cast("Q")
        self._slots: dict[int, int] = {}  # pgid -> slot
        self._free = list(range(slots - 1, -1, -1))
        self._pipe = -1
        self._pidfd = -1
        self._loop: IOLoop | None = None
        try:
            self.process = self._start()
        except BaseException:
            self._close_table()
            raise

    def _start(self) -> subprocess.Popen[bytes]:
        read_end, pipe = os.pipe2(os.O_CLOEXEC)
        try:
            process = subprocess.Popen(
                [self._shell, _SCRIPT, str(self._table_fd)],
                stdin=read_end, stdout=subprocess.PIPE, env={}, close_fds=True,
                pass_fds=(self._table_fd,), start_new_session=True,
                preexec_fn=_ignore_signals,  # once per watchdog: the fork path is fine here
            )
        except OSError as exc:
            os.close(pipe)
            raise WatchdogError(f"cannot start the watchdog ({self._shell}): {exc}") from None
        finally:
            os.close(read_end)
        assert process.stdout is not None
        with process.stdout:
            ready = process.stdout.readline()
        if ready != b"ready\n":
            os.close(pipe)
            process.wait()
            raise WatchdogError("the watchdog did not start; its error is in the log")
        self._pipe = pipe
        log.info("watchdog pid %s is guarding this instance's commands", process.pid)
        return process

    def watch(self) -> None:
        """From now on, replace the watchdog at once if it dies (someone kills it): the new
        one reads the same table. Call from the running IOLoop that will serve."""
        self._loop = IOLoop.current()
        try:
            self._pidfd = os.pidfd_open(self.process.pid)
        except OSError as exc:
            # The watchdog still guards the commands; only its own death would go unseen.
            log.warning("cannot watch the watchdog (pid %s): %s; if it is killed it will not "
                        "be replaced", self.process.pid, exc.strerror or exc)
            return
        self._loop.add_handler(self._pidfd, self._on_exit, IOLoop.READ)

    def _on_exit(self, fd: int, events: int) -> None:
        self._unwatch()
        status = self.process.wait()
        log.error("the watchdog (pid %s) died (status %s); starting a new one",
                  self.process.pid, status)
        os.close(self._pipe)
        self._pipe = -1
        try:
            self.process = self._start()
        except WatchdogError as exc:
            log.error("%s: this instance's commands would outlive it", exc)
            return
        self.watch()

    def _unwatch(self) -> None:
        if self._pidfd >= 0 and self._loop is not None:
            self._loop.remove_handler(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

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
        self._words[slot] = int.from_bytes(b"%7d\n" % pgid, sys.byteorder)

    def reaped(self, pgid: int) -> None:
        """Record that process group ``pgid`` has been reaped."""
        slot = self._slots.pop(pgid, None)
        if slot is not None:
            self._words[slot] = _FREE_WORD
            self._free.append(slot)

    def _grow(self) -> None:
        old = len(self._words)
        # pwrite extends the file with free slots in one step: no moment where the new half
        # holds anything else.
        os.pwrite(self._table_fd, _FREE * old, old * _SLOT)
        self._words.release()
        self._table.resize(2 * old * _SLOT)
        self._words = memoryview(self._table).cast("Q")
        self._free.extend(range(2 * old - 1, old - 1, -1))

    def close(self) -> None:
        """Let the watchdog go (after the engine has ended every command) and reap it."""
        self._unwatch()
        if self._pipe >= 0:
            os.close(self._pipe)
            self._pipe = -1
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            log.warning("the watchdog (pid %s) did not exit; killing it", self.process.pid)
            self.process.kill()
            self.process.wait()
        self._close_table()

    def _close_table(self) -> None:
        if self._table_fd >= 0:
            self._words.release()
            self._table.close()
            os.close(self._table_fd)
            self._table_fd = -1


def _ignore_signals() -> None:
    # Ignored signals stay ignored across exec: no window while the shell starts.
    for sig in _IGNORED:
        signal.signal(sig, signal.SIG_IGN)

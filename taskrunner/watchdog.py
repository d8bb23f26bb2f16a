"""The watchdog: a companion process that kills the instance's commands if the instance dies.

Commands run in sessions of their own, so nothing the kernel does when the instance dies —
even by ``kill -9`` — reaches them. ``PR_SET_PDEATHSIG`` would, but it needs a
``preexec_fn`` (or an exec wrapper), which costs the fast spawn path 2-5x (see
`taskrunner.engine`). Instead, at startup the instance starts one small process, the
watchdog, with the read end of a pipe as its stdin, and tells it over the pipe which
process groups are alive: ``+PGID`` when the engine spawns a command (``on_spawn``),
``-PGID`` when it reaps one (``on_reap``). When the instance dies, the kernel closes its end
of the pipe; the watchdog reads EOF, SIGKILLs every group still listed, and exits. After a
clean shutdown the list is empty and the watchdog just exits.

The watchdog runs in a session of its own, so a signal sent to the instance's process group
(Ctrl-C, supervisord's ``stopasgroup`` / ``killasgroup``) does not reach it, and it ignores
SIGINT, SIGTERM and SIGHUP from birth: EOF (or SIGKILL) is its only way out.
Only the instance holds the write end (close-on-exec, and commands are spawned with
``close_fds``), so no command can keep the watchdog waiting.

Costs and limits: two non-blocking pipe writes of a few bytes per command (measured in
docs/security.md: within noise of the spawn rate). A command whose instance is killed
between ``Popen`` returning and the ``+PGID`` write (a few microseconds) is not listed and
survives; so does a process that left its group with ``setsid``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys

log = logging.getLogger("taskrunner.watchdog")


class Watchdog:
    """The instance's side: starts the watchdog process and keeps it told."""

    def __init__(self) -> None:
        read_end, self._fd = os.pipe2(os.O_CLOEXEC)
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": python_path}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "taskrunner.watchdog"],
                stdin=read_end, env=env, close_fds=True, start_new_session=True,
                preexec_fn=_ignore_signals,  # once per instance: the fork path is fine here
            )
        finally:
            os.close(read_end)
        os.set_blocking(self._fd, False)
        self._pending = b""
        log.info("watchdog pid %s is guarding this instance's commands", self.process.pid)

    @property
    def pid(self) -> int:
        """The watchdog's pid."""
        return self.process.pid

    def spawned(self, pgid: int) -> None:
        """Tell the watchdog that process group ``pgid`` is alive."""
        self._send(b"+%d\n" % pgid)

    def reaped(self, pgid: int) -> None:
        """Tell the watchdog that process group ``pgid`` has been reaped."""
        self._send(b"-%d\n" % pgid)

    def _send(self, message: bytes) -> None:
        if self._fd < 0:
            return
        data = self._pending + message if self._pending else message
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0  # the watchdog is behind: keep the rest for the next write
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            log.error("the watchdog (pid %s) is gone: commands would now outlive a crash",
                      self.process.pid)
            self._close_fd()
            return
        self._pending = data[written:]

    def close(self) -> None:
        """Let the watchdog go (after the engine has ended every command) and reap it."""
        if self._pending:
            os.set_blocking(self._fd, True)
            self._send(b"")
        self._close_fd()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            log.warning("the watchdog (pid %s) did not exit; killing it", self.process.pid)
            self.process.kill()
            self.process.wait()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _ignore_signals() -> None:
    # Ignored signals stay ignored across exec, so there is no window while Python starts.
    for sig in _IGNORED:
        signal.signal(sig, signal.SIG_IGN)


def main() -> None:
    """The watchdog process: follow the list on stdin; at EOF, kill what is listed."""
    _ignore_signals()
    live: set[int] = set()
    rest = b""
    while True:
        try:
            chunk = os.read(0, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            pgid = int(line[1:])
            if line[:1] == b"+":
                live.add(pgid)
            else:
                live.discard(pgid)
    for pgid in live:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(pgid, signal.SIGKILL)
    if live:
        sys.stderr.write(f"taskrunner watchdog: the instance died; killed {len(live)} "
                         f"command group(s): {' '.join(map(str, sorted(live)))}\n")


if __name__ == "__main__":
    main()

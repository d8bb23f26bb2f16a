"""Running ``trun`` (``python -m taskrunner.client``) as a real child: its environment, and a
real terminal (a pty that is its controlling tty, so a typed Ctrl-C is a real SIGINT)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import subprocess
import termios
import time

from helpers import PY

TRUN = [PY, "-m", "taskrunner.client"]


def trun_env(url: str, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUNNER_")}
    env["TASKRUNNER_URL"] = url
    if token is not None:
        env["TASKRUNNER_TOKEN"] = token
    return env


def trun(url: str, *args: str, token: str | None = None, input: bytes | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run ``trun ARGS`` to its end with pipes: exit status, stdout and stderr as bytes."""
    return subprocess.run([*TRUN, *args], env=trun_env(url, token), input=input,
                          capture_output=True, timeout=timeout, check=False)


def _take_the_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    # As a shell starts its foreground job: a Ctrl-C ends it by default, even when the
    # test run itself ignores SIGINT (a shell's background job does), which the program
    # would inherit and keep (Python does), and never see the Ctrl-C typed here.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Terminal:
    """``trun ARGS`` on a pty of its own, in a new session whose controlling tty it is."""

    def __init__(self, url: str, *args: str) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.screen = b""
        try:
            self.proc = subprocess.Popen([*TRUN, *args], stdin=slave, stdout=slave,
                                         stderr=slave, env=trun_env(url),
                                         start_new_session=True,
                                         preexec_fn=_take_the_terminal)
        finally:
            os.close(slave)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_until(self, text: bytes, timeout: float = 30.0) -> bytes:
        """Read the screen until ``text`` is on it (or the program ends); return it all."""
        deadline = time.monotonic() + timeout
        while text not in self.screen and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: the program ended and closed the tty
                    data = b""
                if not data:
                    break
                self.screen += data
        assert text in self.screen, f"{text!r} not on the screen:\n{self.screen!r}"
        return self.screen

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        with contextlib.suppress(AssertionError):
            self.read_until(b"\0", timeout=0.5)  # what is left on the screen
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        os.close(self.master)

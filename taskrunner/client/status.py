"""The status line ``trun run`` keeps on a terminal's last line while a long job runs.

Drawn on stderr only when stderr is a terminal (never into a pipe or a file), and only
when the cursor is at the start of a line, so it never splits a line of the command's
output; it is erased before any output is written and drawn again after.
"""

from __future__ import annotations

import time
from typing import BinaryIO

from taskrunner.client.visible import visible

#: Seconds a job runs before the status line appears: short jobs never show it.
SHOW_AFTER = 1.0

_ERASE = b"\r\x1b[K"


class StatusLine:
    """``text()`` on the terminal ``err`` (if it is one), kept clear of the output."""

    def __init__(self, err: BinaryIO, out: BinaryIO, job_id: str) -> None:
        self.enabled = err.isatty()
        self._err = err
        self._out_is_tty = out.isatty()
        self._job_id = visible(job_id)
        self._started = time.monotonic()
        self._shown = False
        self._line_start = True  # where the terminal's cursor is, as far as we wrote it

    def text(self) -> str:
        """The line: the job and how long it has run."""
        return (f"trun: {self._job_id} running {time.monotonic() - self._started:.0f} s"
                " (Ctrl-C cancels)")

    def tick(self) -> None:
        """Draw or refresh the line, once the job has run `SHOW_AFTER` seconds."""
        if (not self.enabled or not self._line_start
                or time.monotonic() - self._started < SHOW_AFTER):
            return
        self._err.write(_ERASE + b"\x1b[2m" + self.text().encode() + b"\x1b[0m")
        self._err.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the line, if it is drawn."""
        if self._shown:
            self._err.write(_ERASE)
            self._err.flush()
            self._shown = False

    def wrote(self, stream: str, data: bytes) -> None:
        """Output ``data`` went to ``stream``: note where the terminal's cursor is now."""
        if data and (stream == "stderr" or self._out_is_tty):
            self._line_start = data.endswith(b"\n")

"""``trun run`` attached: a job's output to this terminal, live, and its end as our exit.

stdout chunks go to stdout and stderr chunks to stderr, each flushed as it arrives. The
first SIGINT (Ctrl-C) cancels the remote command and waits for the job to end; a second
one stops waiting, prints the job's id and returns, leaving the job as it is. A broken
stdout pipe cancels the job too, as SIGPIPE would end a local command.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import BinaryIO

from taskrunner.client.aio import AsyncJob
from taskrunner.client.models import JobInfo
from taskrunner.client.status import StatusLine
from taskrunner.client.visible import visible

#: Exit status after a Ctrl-C, as a shell gives a command that SIGINT ended.
EXIT_INTERRUPTED = 128 + signal.SIGINT
#: Exit status when stdout's reader went away, as a shell gives one that SIGPIPE ended.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


class Attached:
    """One job followed until it ends, or until the user stops waiting."""

    def __init__(self, job: AsyncJob, out: BinaryIO, err: BinaryIO) -> None:
        self.job = job
        self._out = out
        self._err = err
        self.status = StatusLine(err, out, job.id)
        self.interrupts = 0
        self.broken_pipe = False
        self._cancel: asyncio.Task[JobInfo] | None = None
        self._follow: asyncio.Task[None] | None = None

    async def run(self) -> JobInfo | None:
        """Follow the job to its end and return its final state; None if the user left it
        (a second Ctrl-C)."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._interrupted)
        ticker = loop.create_task(self._tick())
        self._follow = loop.create_task(self._copy_output())
        try:
            await self._follow
        except asyncio.CancelledError:
            if self.interrupts < 2:
                raise
            return None
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            ticker.cancel()
            self.status.clear()
            if self._cancel is not None and not self._cancel.done():
                self._cancel.cancel()
        return self.job.info

    async def _copy_output(self) -> None:
        async for chunk in self.job.follow():
            # An instance decodes output as UTF-8 with replacement; only another server
            # sends a lone surrogate, which strict encoding would turn into a traceback.
            data = chunk.data.encode(errors="replace")
            stream = self._err if chunk.stream == "stderr" else self._out
            self.status.clear()
            try:
                stream.write(data)
                stream.flush()
            except BrokenPipeError:
                self._stdout_gone()
                continue
            self.status.wrote(chunk.stream, data)
            self.status.tick()

    def _stdout_gone(self) -> None:
        if not self.broken_pipe:
            self.broken_pipe = True
            self._start_cancel()

    def _interrupted(self) -> None:
        self.interrupts += 1
        self.status.clear()
        if self.interrupts == 1:
            self._say(f"cancelling {self.job.id} (Ctrl-C again to stop waiting and leave it)")
            self._start_cancel()
        elif self._follow is not None:
            self._say(f"left job {self.job.id} as it is; follow it with: trun logs -f "
                      f"{self.job.id}")
            self._follow.cancel()

    def _start_cancel(self) -> None:
        if self._cancel is None:
            self._cancel = asyncio.get_running_loop().create_task(self.job.cancel())
            self._cancel.add_done_callback(_consume)

    def _say(self, text: str) -> None:
        # "\n" first: the ^C the terminal echoed has no line end.
        self._err.write(f"\ntrun: {visible(text)}\n".encode())
        self._err.flush()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.status.tick()


def _consume(task: asyncio.Task[JobInfo]) -> None:
    # The stream's last line says how the job ended; a failed DELETE only means the job
    # had ended or the stream will tell.
    if not task.cancelled():
        task.exception()


def stdio() -> tuple[BinaryIO, BinaryIO]:
    """This process's stdout and stderr, as bytes."""
    return sys.stdout.buffer, sys.stderr.buffer

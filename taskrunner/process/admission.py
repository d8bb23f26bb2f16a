"""How many commands run at once (``--max-running``) and how many requests may wait
(``--max-queued``); beyond both, 429 with ``Retry-After``.

Slots are handed over first come, first served: a finishing command gives its slot
straight to the oldest waiter, so a newcomer cannot overtake the queue. A waiter that is
cancelled (its caller disconnected) leaves the queue; if a slot reached it in the same
instant, the slot is passed on. A command's timeout starts when it starts, not while it
waits.

`Admission.enqueue` takes a slot or a place in line at once (or raises 429), without
waiting: a job is answered ``queued`` and starts when the slot reaches its place. Only a
`taskrunner.process.launcher.Reservation` takes a slot or a place, and gives it back.

Default ``--max-running``: min(256 x CPUs, (soft RLIMIT_NOFILE - 256) / 4). Most commands
wait — on I/O, the network, a sleep — so the CPU count alone is a poor cap (CPU-bound ones
share the CPUs through the kernel's scheduler either way), and 256 per CPU keeps even a
1-CPU machine above the shared benchmark's 200 concurrent ``sleep`` requests. What a
running command costs the instance is file descriptors — two output pipes and a pidfd,
plus the caller's connection — and the open-file limit must not run out (256 are kept for
listening, idle connections and logs). Default ``--max-queued``: 2 x ``--max-running``;
each waiter holds a connection and its request body (up to ``--max-body``).
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections import deque
from collections.abc import Callable

from taskrunner.config import Config
from taskrunner.errors import ServiceUnavailable, TooManyRequests


def default_max_running() -> int:
    """The machine's default for ``--max-running``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    by_cpu = 256 * (os.cpu_count() or 1)
    by_fds = by_cpu if soft == resource.RLIM_INFINITY else (soft - 256) // 4
    return max(1, min(by_cpu, by_fds))


class Admission:
    """Counts running commands and queues the requests waiting for a slot."""

    def __init__(self, max_running: int, max_queued: int,
                 on_wait: Callable[[float], None] | None = None) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.on_wait = on_wait
        """Told the seconds each wait for a slot lasted, once it ends (e.g. metrics)."""
        self.running = 0
        self.closed = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    @classmethod
    def from_config(cls, config: Config) -> Admission:
        """Apply the defaults: 0 means the machine's default, -1 twice the running limit."""
        running = config.max_running or default_max_running()
        queued = 2 * running if config.max_queued < 0 else config.max_queued
        return cls(running, queued)

    @property
    def queued(self) -> int:
        """How many requests wait for a slot."""
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a free slot now if there is one (and nobody waits for it); False if not."""
        if self.closed:
            raise ServiceUnavailable()
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            return True
        return False

    def enqueue(self) -> asyncio.Future[None]:
        """Take a slot or a place in line now, without waiting: a future that is done when
        the slot is ours (at once if one is free); `TooManyRequests` if the line is full.

        The holder of a done future holds a slot: it gives it back with `release` once
        its command has ended, or with `leave` if it does not start one.
        """
        waiter = asyncio.get_running_loop().create_future()
        if self.try_acquire():
            waiter.set_result(None)
            return waiter
        if len(self._waiters) >= self.max_queued:
            raise TooManyRequests(
                f"{self.running} commands are running and {len(self._waiters)} are waiting, "
                "the most this instance allows; retry later", retry_after=1)
        self._waiters.append(waiter)
        if self.on_wait is not None:
            # However the wait ends: a slot, the caller gone, a cancelled job, shutdown.
            on_wait, started = self.on_wait, time.monotonic()
            waiter.add_done_callback(lambda _: on_wait(time.monotonic() - started))
        return waiter

    def leave(self, waiter: asyncio.Future[None]) -> None:
        """Give up a place taken with `enqueue`: leave the line, or pass on the slot it holds."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self.release()  # a slot reached it (perhaps in this same instant): pass it on
        else:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            waiter.cancel()

    def release(self) -> None:
        """Give a finished command's slot to the oldest waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; running stays the same
                return
        self.running -= 1

    def close(self) -> None:
        """Refuse new requests and send every waiter a 503 (the instance is stopping)."""
        self.closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ServiceUnavailable())


class Share:
    """One caller's share of the instance (``max_running`` in ``--callers``): how many of
    its commands may run or wait for a slot at once; beyond it, 429 at once.

    A share is checked before the instance's admission, so a caller that has used its share
    is refused while the slots it does not hold stay free for the other callers. ``limit``
    may change (the callers file re-read); commands already holding the share keep it.
    """

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.held = 0

    def take(self) -> None:
        """Count one more command of this caller; `TooManyRequests` if its share is used."""
        if self.held >= self.limit:
            raise TooManyRequests(
                f"caller {self.name!r} has {self.held} commands running or waiting, its "
                f"share of this instance (max_running {self.limit}); retry later",
                retry_after=1)
        self.held += 1

    def give(self) -> None:
        """A command of this caller ended, or never started."""
        self.held -= 1

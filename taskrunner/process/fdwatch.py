"""`FdWatcher`: one epoll set for the pipes and pidfds of every running command.

The IOLoop watches the epoll fd itself, once; a command's fds (stdout, stderr, its pidfd)
are added to and removed from the set directly, one ``epoll_ctl`` each way. Through the
IOLoop each fd would cost an ``add_handler`` and a ``remove_handler``, which under uvloop
are several system calls apiece besides the Python layers of Tornado and uvloop (counted in
docs/bench.md).

Level-triggered, like the IOLoop: a callback that leaves data unread is called again.
"""

from __future__ import annotations

import select
from collections.abc import Callable

from tornado.ioloop import IOLoop

FdCallback = Callable[[int, int], None]
"""Called with ``(fd, events)`` when ``fd`` is ready."""

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
_MAX_EVENTS = 256


class FdWatcher:
    """Calls back when watched fds are ready; the IOLoop sees one fd for all of them."""

    def __init__(self, loop: IOLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll()  # close-on-exec, like every fd Python opens
        self._callbacks: dict[int, FdCallback] = {}
        # The epoll object, not its fd number: a loop closed with all_fds=True then closes
        # the object, which knows it is closed. Given the number, the loop would close it
        # behind the object's back, and the object's own close (or its collection) would
        # later close that number again: by then, perhaps, a command's pipe.
        loop.add_handler(self._epoll, self._on_ready, IOLoop.READ)

    def __len__(self) -> int:
        return len(self._callbacks)

    def watch(self, fd: int, events: int, callback: FdCallback) -> None:
        """Call ``callback(fd, events)`` whenever ``fd`` is ready for ``events``."""
        self._epoll.register(fd, events)
        self._callbacks[fd] = callback

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` (before closing it)."""
        if self._callbacks.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def close(self) -> None:
        """Stop watching everything and close the epoll fd."""
        if self._epoll.closed:
            return
        self._loop.remove_handler(self._epoll)
        self._callbacks.clear()
        self._epoll.close()

    def _on_ready(self, epoll: select.epoll, events: int) -> None:
        for ready, ready_events in self._epoll.poll(0, _MAX_EVENTS):
            # A callback may have unwatched another fd of this batch (e.g. a command's
            # exit closes its pipes): it is skipped then.
            callback = self._callbacks.get(ready)
            if callback is not None:
                callback(ready, ready_events)

"""The engine's epoll set and the IOLoop that watches it."""

from __future__ import annotations

import gc
import os

from tornado.ioloop import IOLoop

from taskrunner.process.fdwatch import FdWatcher


def test_a_loop_closed_with_all_fds_never_lets_the_watcher_close_a_reused_fd_number():
    # A loop closed with all_fds=True (as each test's loop is) closes the watcher's epoll
    # fd; the number is then free. Had the loop closed it behind the epoll object's back,
    # collecting the watcher later would close that number again: by then another file's
    # (a command's pipe, in a later test or at a later start), which was seen to hang a
    # command whose pipe vanished under it.
    loop = IOLoop()
    watcher = FdWatcher(loop)
    number = watcher._epoll.fileno()
    loop.close(all_fds=True)
    opened = []
    try:
        while not opened or opened[-1] != number:
            opened.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            assert len(opened) < 100, "the epoll fd's number was never reused"
        del watcher
        gc.collect()
        os.fstat(opened[-1])  # still ours: EBADF here is the bug
    finally:
        for fd in opened:
            os.close(fd)

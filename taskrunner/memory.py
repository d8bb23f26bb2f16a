"""`HeapTrimmer`: give the memory of large command outputs back to the OS after they are sent.

A 1 MiB output passes through the instance as bytes, text and JSON. CPython takes blocks
that large from glibc's malloc, which keeps freed memory in its heap for reuse instead of
returning it, so after a burst of large outputs the instance kept its peak RSS (61-63 MiB
after W3 against 35 idle). ``malloc_trim(0)`` returns the free pages. Measured on W3 (8
connections, 1 MiB each): RSS afterwards 44-49 MiB instead of 59-61, same req/s.

A fixed ``M_MMAP_THRESHOLD`` (every large block mmapped and unmapped) also keeps RSS down,
but costs a page fault per 4 KiB on every use: W3 fell from 367-397 to 208-216 req/s.

Before trimming, a full ``gc.collect()``: a caller who leaves while a large response is
being written leaves it in a reference cycle (the write's exception, its traceback, the
frames that hold the response, the connection that holds the exception), which only the
cyclic collector frees, and that runs only after enough new objects, so never while the
instance is idle. Without it an instance kept 13 MiB per abandoned 2 MiB result (165 MiB
after ten). The collection walks only what was created after start-up (`gc.freeze`).

Both run at most once per ``delay`` seconds, and only after a command whose output was
large. Where the C library has no ``malloc_trim`` (not glibc), only the collection runs.
"""

from __future__ import annotations

import ctypes
import functools
import gc
from collections.abc import Callable

from tornado.ioloop import IOLoop

LARGE_OUTPUT = 256 * 1024
"""Bytes of stdout + stderr from which a finished command asks for a trim."""


@functools.cache
def _find_malloc_trim() -> Callable[[int], int] | None:
    # The C library this process already runs on (dlopen(NULL)): no search, no subprocess.
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class HeapTrimmer:
    """Collects garbage cycles, then calls ``malloc_trim(0)`` where it exists, ``delay``
    seconds after the first `request` since the last trim."""

    def __init__(self, delay: float = 1.0) -> None:
        self.delay = delay
        self.trims = 0
        self._malloc_trim = _find_malloc_trim()
        self._pending: object | None = None

    @property
    def available(self) -> bool:
        """Whether this C library can give freed heap back (glibc's ``malloc_trim``)."""
        return self._malloc_trim is not None

    def request(self) -> None:
        """Ask for a trim soon (after a large output); cheap when one is already due."""
        if self._pending is None:
            self._pending = IOLoop.current().call_later(self.delay, self._trim)

    def close(self) -> None:
        """Cancel a pending trim."""
        if self._pending is not None:
            IOLoop.current().remove_timeout(self._pending)
            self._pending = None

    def _trim(self) -> None:
        self._pending = None
        gc.collect()
        if self._malloc_trim is not None:
            self._malloc_trim(0)
        self.trims += 1

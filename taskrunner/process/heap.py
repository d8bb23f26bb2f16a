"""`HeapTrimmer`: give the memory of large command outputs back to the OS after they are sent.

A large output passes through the instance as bytes, text and JSON, and glibc's malloc
keeps freed blocks in its heap for reuse, so without this an instance would stay at the RSS
of its largest burst. After a command whose output was large, `HeapTrimmer` runs a full
``gc.collect()`` and then ``malloc_trim(0)``, at most once per ``delay`` seconds:

* the collection first, because a caller who leaves while a large response is being
  written leaves it in a reference cycle (the write's exception, its traceback, the frames
  that hold the response, the connection that holds the exception) that only the cyclic
  collector frees, and that collector runs only after enough new objects — never while
  the instance is idle. It walks only what was created after start-up (`gc.freeze`);
* ``malloc_trim(0)`` then returns the free pages. Where the C library has none (not
  glibc), only the collection runs.

A fixed ``M_MMAP_THRESHOLD`` would also keep RSS down, but pays a page fault per 4 KiB on
every use of a large block, which costs more throughput than it saves. The figures are in
docs/bench.md ("Memory after large outputs").
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

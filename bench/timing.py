"""Timing a call in-process, as ``python -m timeit`` does: what the micro-experiments share."""

from __future__ import annotations

import os
import timeit
from collections.abc import Callable
from typing import Any


def best(call: Callable[[], Any], repeat: int) -> float:
    """Seconds per call: the best of ``repeat`` timings, each of as many calls as fill
    0.2 s (the best, not the mean: a busy machine only ever adds time)."""
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=repeat, number=number)) / number


def drain(*fds: int) -> None:
    """Read each pipe to its end, then close it: what a spawn loop does with a child's
    stdout and stderr (in turn: the children of these loops write nothing)."""
    for fd in fds:
        while os.read(fd, 65536):
            pass
        os.close(fd)

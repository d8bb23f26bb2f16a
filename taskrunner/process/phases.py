"""When one command passed each step of its way through the launcher: for its spans.

`Reservation` (launcher.py) keeps a `Phases` from `Launcher.reserve` on: the wait for a
slot ends when ``start`` begins (its confinement, then the spawn), and the run when the
command's result is set. A `CommandTracer` the launcher is given is told of each started
command that carries a trace context (``CommandSpec.trace``), with these times: wall-clock
(``time.time()``), as spans are exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from taskrunner.process.engine import Command


@dataclass
class Phases:
    """The times of one command's steps, each set as it is passed."""

    reserved: float
    """Its reservation was made (checks passed, share and slot or queue place taken)."""
    spawning: float | None = None
    """A slot was its own and ``start`` began: the queue wait ended, the spawn began."""
    spawned: float | None = None
    """The engine has spawned it: the run began."""


class CommandTracer(Protocol):
    """Told about every command started with a trace context (e.g. the OTel spans)."""

    def command_started(self, command: Command, phases: Phases) -> None: ...

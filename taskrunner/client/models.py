"""What the service answers, as typed values: a command's result, a job, an output chunk,
what a command cost.

Parsed leniently: fields this client does not know are kept in ``raw`` and ignored, so a
newer instance that adds fields does not break an older client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from taskrunner.client.errors import ProtocolError

#: The states in which a job has ended and will not change again.
FINAL_STATES = frozenset({"exited", "timed_out", "cancelled", "failed", "lost"})


@dataclass(frozen=True)
class Usage:
    """What a command cost (docs/api.md, "What a command cost"): CPU seconds and peak
    resident bytes from the kernel's rusage, the seconds it waited for a slot, and, with
    cgroup limits, its whole tree's peak memory and CPU seconds."""

    cpu_user: float
    cpu_system: float
    max_rss: int
    queued: float
    memory_peak: int | None = None
    cpu_total: float | None = None


@dataclass(frozen=True)
class RunResult:
    """The answer of ``POST /run``: how the command ended and what it wrote."""

    status: int
    stdout: str
    stderr: str
    timed_out: bool
    duration: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    usage: Usage | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def exit_code(self) -> int:
        """The status as a shell reports it (124 timed out, 128+N for signal N)."""
        return exit_code(self.status, self.timed_out)


@dataclass(frozen=True)
class JobInfo:
    """A job object as the service shows it (summaries from ``GET /jobs`` lack output)."""

    id: str
    state: str
    args: list[str]
    status: int | None = None
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    duration: float | None = None
    created: str | None = None
    finished: str | None = None
    error: dict[str, Any] | None = None
    instance: str | None = None
    usage: Usage | None = None  # once it has ended, if it started
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """The job has ended; nothing about it changes any more."""
        return self.state in FINAL_STATES

    @property
    def exit_code(self) -> int | None:
        """As `RunResult.exit_code`; None while running and for a job with no status."""
        return None if self.status is None else exit_code(self.status, self.timed_out)


@dataclass(frozen=True)
class Chunk:
    """A piece of a job's output: ``stream`` is ``"stdout"`` or ``"stderr"``."""

    stream: str
    data: str


def exit_code(status: int, timed_out: bool) -> int:
    """Popen's status the way GNU ``timeout`` and shells report it: 124 when the timeout
    ended the command, 128+N when signal N did, the exit status otherwise."""
    if timed_out:
        return 124
    return 128 - status if status < 0 else status


def run_result(body: Any) -> RunResult:
    """A `RunResult` from a decoded ``/run`` answer."""
    try:
        return RunResult(status=int(body["status"]), stdout=str(body["stdout"]),
                         stderr=str(body["stderr"]), timed_out=bool(body["timed_out"]),
                         duration=float(body["duration"]),
                         stdout_truncated=bool(body.get("stdout_truncated", False)),
                         stderr_truncated=bool(body.get("stderr_truncated", False)),
                         usage=usage(body.get("usage")), raw=body)
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"not a command result: {body!r:.200}") from e


def job_info(body: Any) -> JobInfo:
    """A `JobInfo` from a decoded job object."""
    try:
        status = body.get("status")
        duration = body.get("duration")
        return JobInfo(id=str(body["id"]), state=str(body["state"]),
                       args=[str(a) for a in body.get("args", [])],
                       status=None if status is None else int(status),
                       stdout=str(body.get("stdout") or ""), stderr=str(body.get("stderr") or ""),
                       timed_out=bool(body.get("timed_out", False)),
                       duration=None if duration is None else float(duration),
                       created=body.get("created"), finished=body.get("finished"),
                       error=body.get("error"), instance=body.get("instance"),
                       usage=usage(body.get("usage")), raw=body)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"not a job: {body!r:.200}") from e


def usage(body: Any) -> Usage | None:
    """A `Usage` from a decoded ``usage`` object; None for null or an absent one (an older
    instance's). Raises as the parsers above expect of a malformed one."""
    if body is None:
        return None
    peak, total = body.get("memory_peak"), body.get("cpu_total")
    return Usage(cpu_user=float(body["cpu_user"]), cpu_system=float(body["cpu_system"]),
                 max_rss=int(body["max_rss"]), queued=float(body["queued"]),
                 memory_peak=None if peak is None else int(peak),
                 cpu_total=None if total is None else float(total))

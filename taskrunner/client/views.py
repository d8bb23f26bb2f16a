"""How ``trun`` shows things to a person: jobs as an aligned table, one job a line
(``trun ps``); what a command cost as one line, as ``time(1)`` does (``--usage``)."""

from __future__ import annotations

import shlex
from datetime import datetime

from taskrunner.client.models import JobInfo, Usage
from taskrunner.client.visible import visible

_COLUMNS = ("ID", "STATE", "EXIT", "CALLER", "CREATED", "DURATION", "COMMAND")


def job_table(jobs: list[JobInfo]) -> str:
    """The table, headed; every cell made `visible`; the command is shell-quoted and cut
    to keep a line short."""
    rows = [_COLUMNS, *(_row(job) for job in jobs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)),
                                row[-1]]).rstrip() for row in rows)


def usage_line(usage: Usage) -> str:
    """``0.42 s user, 0.05 s system, 31.2 MiB peak, waited 0.00 s``: the peak is the
    cgroup's when there is one, and its CPU time is added then."""
    peak = usage.memory_peak if usage.memory_peak is not None else usage.max_rss
    line = (f"{usage.cpu_user:.2f} s user, {usage.cpu_system:.2f} s system, "
            f"{peak / (1 << 20):.1f} MiB peak, waited {usage.queued:.2f} s")
    if usage.cpu_total is not None:
        line += f", {usage.cpu_total:.2f} s CPU in its cgroup"
    return line


def local_time(stamp: str | None) -> str:
    """An API time (ISO 8601, UTC) as this machine's local time with its zone, to the second
    (``YYYY-MM-DD HH:MM:SS JST``): a person reads the clock they live by, and the zone says
    which it is. What is not such a time is shown as it came."""
    if not stamp:
        return ""
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    if when.tzinfo is None:
        return stamp
    local = when.astimezone()
    zone = local.strftime("%Z")
    # A zone without a name of letters (TZ=UTC-3 names itself "UTC") is its offset.
    if not zone.isalpha() or (local.utcoffset() and zone == "UTC"):
        zone = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M:%S} {zone}"


def _row(job: JobInfo) -> tuple[str, ...]:
    exit_status = "" if job.exit_code is None else str(job.exit_code)
    duration = "" if job.duration is None else f"{job.duration:.1f}s"
    caller = job.raw.get("caller")
    command = visible(shlex.join(job.args))
    if len(command) > 60 or job.raw.get("args_truncated"):
        command = command[:59] + "…"
    return (visible(job.id), visible(job.state), exit_status,
            "-" if caller is None else visible(str(caller)), visible(local_time(job.created)),
            duration, command)

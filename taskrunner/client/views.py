"""How ``trun`` shows things to a person: jobs as an aligned table, one job a line
(``trun ps``); what a command cost as one line, as ``time(1)`` does (``--usage``)."""

from __future__ import annotations

import shlex

from taskrunner.client.models import JobInfo, Usage
from taskrunner.client.visible import visible

_COLUMNS = ("ID", "STATE", "EXIT", "CREATED", "DURATION", "COMMAND")


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


def _row(job: JobInfo) -> tuple[str, ...]:
    exit_status = "" if job.exit_code is None else str(job.exit_code)
    created = (job.created or "").replace("T", " ").rstrip("Z")[:19]
    duration = "" if job.duration is None else f"{job.duration:.1f}s"
    command = visible(shlex.join(job.args))
    if len(command) > 60 or job.raw.get("args_truncated"):
        command = command[:59] + "…"
    return (visible(job.id), visible(job.state), exit_status, visible(created), duration,
            command)

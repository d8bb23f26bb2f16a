"""How ``trun ps`` shows jobs to a person: an aligned table, one job a line."""

from __future__ import annotations

import shlex

from taskrunner.client.models import JobInfo
from taskrunner.client.visible import visible

_COLUMNS = ("ID", "STATE", "EXIT", "CREATED", "DURATION", "COMMAND")


def job_table(jobs: list[JobInfo]) -> str:
    """The table, headed; every cell made `visible`; the command is shell-quoted and cut
    to keep a line short."""
    rows = [_COLUMNS, *(_row(job) for job in jobs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)),
                                row[-1]]).rstrip() for row in rows)


def _row(job: JobInfo) -> tuple[str, ...]:
    exit_status = "" if job.exit_code is None else str(job.exit_code)
    created = (job.created or "").replace("T", " ").rstrip("Z")[:19]
    duration = "" if job.duration is None else f"{job.duration:.1f}s"
    command = visible(shlex.join(job.args))
    if len(command) > 60 or job.raw.get("args_truncated"):
        command = command[:59] + "…"
    return (visible(job.id), visible(job.state), exit_status, visible(created), duration,
            command)

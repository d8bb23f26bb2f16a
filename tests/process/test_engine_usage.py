"""What a command cost, as the engine reports it in `CommandResult.usage`: the kernel's
rusage on both spawn paths (posix_spawn and Popen), descendants the command waited for
included, and nothing for the reaper to lose."""

from __future__ import annotations

import resource
import sys
from typing import Any

import pytest

from taskrunner.process.engine import CommandResult, CommandSpec, ProcessEngine

PY = sys.executable
MIB = 1 << 20
# About 0.3 s of user CPU, however slow the machine: it spins on its own CPU clock, read
# once per 10,000 turns (reading it is a system call).
BUSY = [PY, "-c", "import time\nt = time.process_time()\n"
        "while time.process_time() - t < 0.3:\n    for _ in range(10000): pass"]


def touching(size: int) -> list[str]:
    """A program that touches every page of ``size`` bytes (a bytes object it fills)."""
    return [PY, "-c", f"b = b'x' * {size}; print(len(b))"]


def _run(io_loop: Any, spec: CommandSpec) -> CommandResult:
    async def run() -> CommandResult:
        engine = ProcessEngine(max_output=1 << 16)
        try:
            return await engine.start(spec).result
        finally:
            engine.close()

    return io_loop.run_sync(run, timeout=30)


@pytest.mark.parametrize("cwd", [None, "/"], ids=["posix_spawn", "popen"])
def test_a_busy_loop_reports_its_cpu_time_on_either_spawn_path(io_loop, cwd):
    result = _run(io_loop, CommandSpec(args=BUSY, timeout=20, cwd=cwd))
    assert result.status == 0 and result.usage is not None
    usage = result.usage
    # Loose: the loop stops at 0.3 s of process CPU (user and system); start-up adds some.
    assert 0.2 <= usage.cpu_user <= 2.0, usage
    assert 0.28 <= usage.cpu_user + usage.cpu_system <= 2.5, usage
    assert usage.queued == 0.0 and usage.memory_peak is None and usage.cpu_total is None


def test_a_program_touching_64_mib_reports_a_peak_rss_of_at_least_that(io_loop):
    # A child spawned with vfork (posix_spawn, Popen) starts from its parent's high-water
    # mark (exec keeps the larger of the old mm's and the new one's): touch 64 MiB beyond
    # this process's own, so that only the command's pages can reach the figure.
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = _run(io_loop, CommandSpec(args=touching(floor + 64 * MIB), timeout=20))
    assert result.stdout == f"{floor + 64 * MIB}\n"
    assert result.usage is not None and result.usage.max_rss >= floor + 64 * MIB, (
        floor, result.usage)


def test_a_shells_waited_for_child_is_counted_in_the_shells_usage(io_loop):
    # sh waits for the busy python it runs: RUSAGE_CHILDREN semantics fold it into sh's.
    script = " ".join(f"'{word}'" for word in BUSY) + "; :"
    result = _run(io_loop, CommandSpec(args=["sh", "-c", script], timeout=20))
    assert result.status == 0 and result.usage is not None
    assert result.usage.cpu_user >= 0.2, result.usage


def test_a_short_command_costs_little_and_its_json_has_the_four_figures(io_loop):
    result = _run(io_loop, CommandSpec(args=["true"], timeout=10))
    assert result.usage is not None
    body = result.usage.to_json()
    assert set(body) == {"cpu_user", "cpu_system", "max_rss", "queued"}
    assert body["cpu_user"] + body["cpu_system"] < 0.2
    # No more than the floor it inherits from this process (see the 64 MiB test above).
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert 0 < body["max_rss"] <= floor + 16 * MIB

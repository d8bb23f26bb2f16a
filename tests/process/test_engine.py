"""The process engine through its own API, without HTTP: timeouts, cancels and group
kills, the output cap, stdin, reaping and fd hygiene, and the one output buffer a command's
result and its listeners share."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from helpers import group_alive, pid_alive, until, wait_until

from taskrunner.errors import SpawnError
from taskrunner.process.engine import CommandSpec, ProcessEngine

PY = sys.executable


def test_the_result_and_a_listener_share_the_commands_one_output_log(io_loop):
    heard: list[tuple[str, bytes]] = []

    async def run():
        engine = ProcessEngine(max_output=8)
        try:
            spec = CommandSpec(args=[PY, "-c", "import sys; sys.stdout.write('0123456789');"
                                     "sys.stdout.flush(); sys.stderr.write('err')"], timeout=10)
            command = engine.start(spec, lambda stream, data: heard.append((stream, data)))
            result = await command.result
            return command, result
        finally:
            engine.close()

    command, result = io_loop.run_sync(run, timeout=30)
    assert result.output is command.output  # one buffer, not a copy per consumer
    assert (result.status, result.stdout, result.stderr) == (0, "01234567", "err")
    assert result.stdout_truncated and not result.stderr_truncated
    assert result.output.dropped == {"stdout": 2, "stderr": 0}
    # The listener hears each chunk that was kept, nothing past the limit.
    assert b"".join(d for s, d in heard if s == "stdout") == b"0123456789"[:len(
        b"".join(d for s, d in heard if s == "stdout"))]
    assert b"".join(d for s, d in heard if s == "stderr") == b"err"



def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _with_engine(io_loop: Any, body: Callable[[ProcessEngine], Awaitable[Any]],
                 **settings: Any) -> Any:
    """Run ``body(engine)`` on a fresh engine, closed afterwards whatever happened."""

    async def run() -> Any:
        engine = ProcessEngine(max_output=settings.pop("max_output", 1 << 20), **settings)
        try:
            return await body(engine)
        finally:
            engine.kill_all()
            await engine.wait_all(5)
            engine.close()

    return io_loop.run_sync(run, timeout=60)


def test_a_command_that_outlives_its_timeout_is_killed_with_its_whole_group(io_loop, tmp_path):
    pids = tmp_path / "pids"

    async def body(engine: ProcessEngine) -> Any:
        spec = CommandSpec(args=["sh", "-c", f"sleep 100 & echo $! > {pids}; sleep 100"],
                           timeout=0.5)
        started = time.monotonic()
        command = engine.start(spec)
        result = await command.result
        return command, result, time.monotonic() - started

    command, result, took = _with_engine(io_loop, body)
    assert result.timed_out and not result.cancelled
    assert result.status == -9  # a signal, as Popen says it
    assert 0.5 <= took < 5
    grandchild = int(pids.read_text())
    # Killed at once; init reaps the orphan a moment later.
    assert wait_until(lambda: not pid_alive(grandchild) and not group_alive(command.pid))


def test_cancel_kills_the_group_and_says_cancelled(io_loop):
    async def body(engine: ProcessEngine) -> Any:
        command = engine.start(CommandSpec(args=["sleep", "100"], timeout=60))
        assert engine.running == 1
        command.cancel()
        result = await command.result
        return command, result, engine.running

    command, result, running = _with_engine(io_loop, body)
    assert result.cancelled and not result.timed_out and result.status == -9
    assert running == 0 and not pid_alive(command.pid)


def test_when_the_main_process_exits_what_it_left_in_its_group_is_killed(io_loop, tmp_path):
    pids = tmp_path / "pids"

    async def body(engine: ProcessEngine) -> Any:
        started = time.monotonic()
        command = engine.start(CommandSpec(
            args=["sh", "-c", f"sleep 100 & echo $! > {pids}; echo hi"], timeout=60))
        result = await command.result
        return result, time.monotonic() - started

    result, took = _with_engine(io_loop, body)
    assert (result.status, result.stdout, result.timed_out) == (0, "hi\n", False)
    assert took < 5  # not the sleep's 100 s: its pipes were not waited for
    assert wait_until(lambda: not pid_alive(int(pids.read_text())))


def test_output_past_the_cap_is_drained_counted_and_said_truncated(io_loop):
    async def body(engine: ProcessEngine) -> Any:
        # 4 MiB on each stream: far past the cap and past a pipe's 64 KiB, so the command
        # would block for ever if the engine stopped reading at the cap.
        code = ("import sys; b = b'x' * 4194304; sys.stdout.buffer.write(b); "
                "sys.stderr.buffer.write(b)")
        return await engine.start(CommandSpec(args=[PY, "-c", code], timeout=30)).result

    result = _with_engine(io_loop, body, max_output=1000)
    assert result.status == 0 and not result.timed_out
    assert result.stdout == "x" * 1000 and result.stderr == "x" * 1000
    assert result.stdout_truncated and result.stderr_truncated
    assert result.output.dropped == {"stdout": 4194304 - 1000, "stderr": 4194304 - 1000}


def test_stdin_is_written_whole_and_closed(io_loop):
    text = "line\n" * 50000  # 250 kB: more than a pipe holds, written as the command reads

    async def body(engine: ProcessEngine) -> Any:
        spec = CommandSpec(args=[PY, "-c", "import sys; print(len(sys.stdin.read()))"],
                           timeout=30, stdin=text)
        return await engine.start(spec).result

    result = _with_engine(io_loop, body)
    assert (result.status, result.stdout) == (0, f"{len(text)}\n")


def test_a_setsid_escapee_holding_the_pipes_does_not_hold_the_result(io_loop, tmp_path):
    pids = tmp_path / "pids"

    async def body(engine: ProcessEngine) -> Any:
        started = time.monotonic()
        command = engine.start(CommandSpec(
            args=[PY, "-c", "import os, subprocess, sys; p = subprocess.Popen(['sleep', '30'],"
                  " start_new_session=True); open(sys.argv[1], 'w').write(str(p.pid));"
                  " print('left')", str(pids)], timeout=60))
        result = await command.result
        return result, time.monotonic() - started

    result, took = _with_engine(io_loop, body, drain_grace=0.3)
    try:
        assert (result.status, result.stdout) == (0, "left\n")
        assert took < 5  # the drain grace, not the escapee's 30 s
    finally:
        os.kill(int(pids.read_text()), 9)  # out of the engine's reach by design


def test_a_missing_program_is_a_spawn_error_and_leaves_nothing_open(io_loop):
    async def body(engine: ProcessEngine) -> Any:
        engine.fd_watcher()  # the engine's own fd, made before counting
        before = _open_fds()
        with pytest.raises(SpawnError) as raised:
            engine.start(CommandSpec(args=["/nonexistent/program"], timeout=5))
        return before, _open_fds(), raised.value, engine.running

    before, after, error, running = _with_engine(io_loop, body)
    assert "/nonexistent/program" in str(error)
    assert after == before and running == 0


def test_every_command_is_reaped_and_its_fds_closed(io_loop):
    async def body(engine: ProcessEngine) -> Any:
        engine.fd_watcher()
        before = _open_fds()
        commands = [engine.start(CommandSpec(args=["sh", "-c", f"echo {i}; exit {i % 3}"],
                                             timeout=10, stdin="x" if i % 2 else None))
                    for i in range(40)]
        results = await asyncio.gather(*(command.result for command in commands))
        return commands, results, before, _open_fds()

    commands, results, before, after = _with_engine(io_loop, body)
    assert [r.status for r in results] == [i % 3 for i in range(40)]
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(40)]
    assert after == before  # pipes and pidfds all closed
    assert not any(pid_alive(command.pid) for command in commands)  # no zombie either


def test_kill_all_ends_every_running_command_and_wait_all_sees_them_end(io_loop):
    async def body(engine: ProcessEngine) -> Any:
        commands = [engine.start(CommandSpec(args=["sleep", "100"], timeout=60))
                    for _ in range(5)]
        assert not await engine.wait_all(0.2)  # still running
        engine.kill_all()
        assert await engine.wait_all(5)
        await until(lambda: engine.running == 0)
        return [await command.result for command in commands], commands

    results, commands = _with_engine(io_loop, body)
    assert all(r.status == -9 and not r.timed_out for r in results)
    assert not any(pid_alive(command.pid) for command in commands)


def test_a_listener_hears_the_chunks_as_they_are_written(io_loop, tmp_path):
    gate = tmp_path / "gate"
    heard: list[bytes] = []

    async def body(engine: ProcessEngine) -> Any:
        command = engine.start(CommandSpec(
            args=["sh", "-c", f"echo first; while [ ! -e {gate} ]; do sleep 0.01; done;"
                  " echo second"], timeout=30),
            lambda stream, data: heard.append(data))
        await until(lambda: b"".join(heard) == b"first\n")
        assert not command.result.done()  # heard while it still runs
        gate.write_text("")
        return await command.result

    result = _with_engine(io_loop, body)
    assert result.stdout == "first\nsecond\n" and b"".join(heard) == b"first\nsecond\n"

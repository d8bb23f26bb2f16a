"""The process engine through its own API, without HTTP: one output buffer per command,
shared by its result and by whoever listens to it (a job)."""

from __future__ import annotations

import sys

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

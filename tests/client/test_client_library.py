"""taskrunner.client against a real child instance: the sync and async flavours run
commands, follow output live, wait, cancel (the process gone), and raise typed errors with
the service's code; the output decoder reads NDJSON and SSE split anywhere."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import httpx
import pytest
from helpers import PY, pid_alive, wait_for, wait_until

from taskrunner.client import (
    AsyncClient,
    CannotStart,
    Chunk,
    Client,
    NotFound,
    TooManyRequests,
    Unauthorized,
)
from taskrunner.client.protocol import OutputDecoder

# Three lines 0.3 s apart: the command's own pace, not a synchronisation.
PACED = [PY, "-c", "import os, time\nfor i in range(3):\n    os.write(1, b'%d\\n' % i)\n"
         "    time.sleep(0.3)"]
# Prints its pid, then waits to be killed.
WAITS = ["sh", "-c", "echo $$; exec sleep 60"]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


@pytest.fixture
def url(spawn_instance):
    return spawn_instance().url


def test_sync_run_gives_status_output_and_passes_env_cwd_stdin(url, tmp_path):
    with Client(url) as client:
        result = client.run(["sh", "-c", "cat; echo $NAME; pwd; echo oops >&2; exit 3"],
                            env={"NAME": "value"}, cwd=str(tmp_path), stdin="in\n", timeout=10)
    assert (result.status, result.exit_code) == (3, 3)
    assert result.stdout == f"in\nvalue\n{tmp_path}\n"
    assert result.stderr == "oops\n"
    assert not result.timed_out


def test_sync_follow_yields_chunks_as_they_are_written_then_wait_gives_the_end(url):
    with Client(url) as client:
        job = client.submit(PACED)
        seen = [(time.monotonic(), chunk) for chunk in job.follow()]
        assert [chunk for _, chunk in seen] == [Chunk("stdout", f"{i}\n") for i in range(3)]
        assert all(gap > 0.15 for gap in gaps([t for t, _ in seen])), seen
        assert job.info.state == "exited"
        assert job.wait().exit_code == 0  # an ended job: the stream ends at once
        assert [j.id for j in client.jobs(state="exited")] == [job.id]


def test_sync_cancel_kills_the_command(url):
    with Client(url) as client:
        job = client.submit(WAITS)
        pid = int(next(iter(job.follow())).data)
        info = job.cancel()
        assert (info.state, info.status, info.exit_code) == ("cancelled", -9, 137)
        assert wait_until(lambda: not pid_alive(pid))
        assert job.refresh().state == "cancelled"


def test_sync_errors_are_typed_and_carry_the_service_code(url):
    with Client(url) as client:
        with pytest.raises(CannotStart) as cannot:
            client.run(["no-such-program-here"])
        assert (cannot.value.status, cannot.value.code) == (422, "spawn_failed")
        with pytest.raises(NotFound) as missing:
            client.job("nowhere.AAAAAAAAAAAAAAAAAAAAAA")
        assert missing.value.code == "job_not_found"


def test_a_wrong_token_is_unauthorized(spawn_instance):
    child = spawn_instance(env={"TASKRUNNER_TOKEN": "right-token-0123456789"})
    for token in (None, "wrong-token"):
        with Client(child.url, token) as client, pytest.raises(Unauthorized) as refused:
            client.jobs()
        assert refused.value.code == "unauthorized"
    with Client(child.url, "right-token-0123456789") as client:
        assert client.run(["true"]).status == 0


def test_a_busy_instance_refuses_with_retry_after_and_retries_honour_it(spawn_instance,
                                                                          tmp_path):
    child = spawn_instance("--max-running", "1", "--max-queued", "0")
    gate = tmp_path / "gate"
    retried = threading.Event()
    with Client(child.url) as client:
        holder = client.submit(["sh", "-c", wait_for(gate)])
        with pytest.raises(TooManyRequests) as busy:
            client.run(["true"])
        assert (busy.value.code, busy.value.retry_after) == ("too_many_requests", 1.0)

        def open_gate(error, seconds):
            assert (error.code, seconds) == ("too_many_requests", 1.0)
            gate.touch()  # the slot frees while the client waits to retry
            retried.set()

        patient = Client(child.url, retries=5, on_retry=open_gate)
        try:
            assert patient.run(["echo", "in"]).stdout == "in\n"
        finally:
            patient.close()
        assert retried.is_set()
        assert holder.wait().state == "exited"


def test_async_flavour_runs_follows_waits_and_cancels(url):
    async def main():
        async with AsyncClient(url) as client:
            assert (await client.run(["sh", "-c", "exit 3"])).exit_code == 3
            job = await client.submit(PACED)
            seen = [(time.monotonic(), chunk.data) async for chunk in job.follow()]
            assert [data for _, data in seen] == ["0\n", "1\n", "2\n"]
            assert all(gap > 0.15 for gap in gaps([t for t, _ in seen])), seen
            assert (await job.wait()).state == "exited"

            waiting = await client.submit(WAITS)
            stream = waiting.follow()
            pid = int((await anext(stream)).data)
            await stream.aclose()
            assert (await waiting.cancel()).state == "cancelled"
            assert wait_until(lambda: not pid_alive(pid))
            assert (await client.job(waiting.id)).info.state == "cancelled"
            with pytest.raises(CannotStart) as cannot:
                await client.submit(["no-such-program-here"])
            assert cannot.value.code == "spawn_failed"

    asyncio.run(main())


@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/event-stream"])
def test_the_decoder_reads_a_real_stream_split_anywhere(url, accept):
    with Client(url) as client:
        job = client.submit(["sh", "-c", "echo out; echo err >&2; printf 'ü'"])
        job.wait()
    answer = httpx.get(f"{url}/jobs/{job.id}/output", headers={"Accept": accept}, timeout=30)
    content_type = answer.headers["content-type"]
    whole = OutputDecoder(content_type).feed(answer.content)
    decoder = OutputDecoder(content_type)
    pieces = [event for i in range(len(answer.content))
              for event in decoder.feed(answer.content[i:i + 1])]
    assert pieces == whole
    chunks = whole[:-1]
    for stream, text in (("stdout", "out\nü"), ("stderr", "err\n")):
        assert "".join(c.data for c in chunks if c.stream == stream) == text
    assert decoder.close() == whole[-1]
    assert decoder.close().state == "exited"

"""GET /jobs/<id>/output: live, in order, replayable.

Liveness is shown by handshakes, not clocks: the command waits for a gate (a file) that the
test opens only once the stream has delivered what came before, so output held back until
the job ends would leave the command waiting and the test failing at its deadline.
"""

import asyncio
import json
import time

import pytest
from conftest import with_config
from helpers import PY, get_job, submit, wait_done


def gated(*steps):
    """A Python program that writes each ``(fd, text)`` step, and before each step after the
    first waits for the file ``gate<i>`` in the directory given as its argument."""
    lines = ["import os, sys, time",
             "def wait(name):",
             "    path = os.path.join(sys.argv[1], name)",
             "    deadline = time.monotonic() + 60",
             "    while not os.path.exists(path) and time.monotonic() < deadline:",
             "        time.sleep(0.01)"]
    for i, (fd, text) in enumerate(steps):
        if i:
            lines.append(f"wait('gate{i}')")
        lines.append(f"os.write({fd}, {text.encode()!r})")  # one write: one chunk
    return "\n".join(lines) + "\n"


def untimed(item):
    return {k: v for k, v in item.items() if k != "t"} if "stream" in item else item


def ndjson(body):
    return [json.loads(line) for line in body.decode().splitlines()]


class Follower:
    """A streaming callback that parses NDJSON items and opens gate<n> once n chunk items
    (``stream``/``data``) have arrived."""

    def __init__(self, directory):
        self.directory = directory
        self.items = []
        self.buffer = bytearray()

    def __call__(self, chunk):
        self.buffer += chunk  # an HTTP chunk may end in the middle of a line
        while b"\n" in self.buffer:
            line, _, rest = bytes(self.buffer).partition(b"\n")
            self.buffer[:] = rest
            self.items.append(json.loads(line))
            chunks = [item for item in self.items if "stream" in item]
            if "stream" in self.items[-1]:
                (self.directory / f"gate{len(chunks)}").touch()


@pytest.mark.gen_test(timeout=30)
async def test_output_streams_live_as_ndjson_and_ends_with_the_job(instance, tmp_path):
    script = gated((1, "first\n"), (2, "oops\n"), (1, "second\n"))
    job = await submit(instance, {"args": [PY, "-c", script, str(tmp_path)]})
    follower = Follower(tmp_path)
    response = await instance.request("GET", f"/jobs/{job['id']}/output",
                                      streaming_callback=follower)
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert response.headers["X-Accel-Buffering"] == "no"
    # Each chunk reached us while the command was still waiting for us to see it; each sent
    # live carries its time (tests/web/test_stream_times.py), left out here.
    assert [untimed(item) for item in follower.items[:-1]] == [
        {"stream": "stdout", "data": "first\n"}, {"stream": "stderr", "data": "oops\n"},
        {"stream": "stdout", "data": "second\n"}]
    final = follower.items[-1]
    assert final["id"] == job["id"] and final["state"] == "exited" and final["status"] == 0
    assert final == await get_job(instance, job["id"])
    # Replayed once it has ended: the same chunks in the same order, without times.
    response = await instance.request("GET", f"/jobs/{job['id']}/output")
    assert ndjson(response.body) == [untimed(item) for item in follower.items]


@pytest.mark.gen_test(timeout=30)
async def test_each_chunk_reaches_the_stream_before_the_command_writes_the_next(
        instance, tmp_path):
    # The command cannot write chunk n+1 until the stream has delivered chunk n: a stream
    # that batched, or waited for the end, would stall it until its gates time out.
    steps = [(1, f"line {n}\n") for n in range(6)]
    job = await submit(instance, {"args": [PY, "-c", gated(*steps), str(tmp_path)]})
    follower = Follower(tmp_path)
    started = time.monotonic()
    await instance.request("GET", f"/jobs/{job['id']}/output", streaming_callback=follower)
    assert [item["data"] for item in follower.items[:-1]] == [text for _, text in steps]
    assert follower.items[-1]["state"] == "exited"
    # Each gate waits up to 60 s: finishing well within that shows no step stalled.
    assert time.monotonic() - started < 20


@pytest.mark.gen_test(timeout=15)
async def test_sse_when_the_client_accepts_event_stream(instance):
    job = await submit(instance, {"args": ["sh", "-c", "echo one; sleep 0.2; echo two"]})
    response = await instance.request("GET", f"/jobs/{job['id']}/output",
                                      headers={"Accept": "text/event-stream"})
    assert response.code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["X-Accel-Buffering"] == "no"
    text = response.body.decode()
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(event.startswith("data: ") and "\n" not in event for event in events), events
    items = [json.loads(event[len("data: "):]) for event in events]
    # One event per chunk read: how the two lines were split depends on the scheduler.
    assert all(item["stream"] == "stdout" for item in items[:-1])
    assert "".join(item["data"] for item in items[:-1]) == "one\ntwo\n"
    assert items[-1]["state"] == "exited"


@pytest.mark.gen_test(timeout=30)
async def test_multibyte_characters_split_across_chunks_arrive_whole(instance, tmp_path):
    script = ("import os, sys, time\n"
              "os.write(1, 'é'.encode()[:1])\n"
              "gate = os.path.join(sys.argv[1], 'gate')\n"
              "deadline = time.monotonic() + 60\n"
              "while not os.path.exists(gate) and time.monotonic() < deadline:\n"
              "    time.sleep(0.01)\n"
              "os.write(1, 'é'.encode()[1:] + b'!')\n")
    job = await submit(instance, {"args": [PY, "-c", script, str(tmp_path)]})
    kept = instance.ctx.jobs.get(job["id"])
    deadline = time.monotonic() + 20
    while kept.output.size < 1:  # the first byte alone is in: the character is split
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    (tmp_path / "gate").touch()
    response = await instance.request("GET", f"/jobs/{job['id']}/output")
    items = ndjson(response.body)
    assert "".join(item["data"] for item in items[:-1]) == "é!"
    assert items[-1]["stdout"] == "é!"


@pytest.mark.gen_test(timeout=30)
async def test_a_stream_client_that_leaves_does_not_affect_the_job(instance, tmp_path):
    script = gated((1, "first\n"), (1, "second\n"))
    job = await submit(instance, {"args": [PY, "-c", script, str(tmp_path)]})
    reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
    writer.write(f"GET /jobs/{job['id']}/output HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    assert b"first" in await reader.readuntil(b"first")
    writer.close()
    await writer.wait_closed()
    deadline = time.monotonic() + 20
    while instance.ctx.in_flight:  # the stream's handler lets go of its request
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert (await get_job(instance, job["id"]))["state"] == "running"
    (tmp_path / "gate1").touch()
    done = await wait_done(instance, job["id"])
    assert done["state"] == "exited" and done["status"] == 0
    assert done["stdout"] == "first\nsecond\n"


@with_config(max_running=1, max_queued=2)
@pytest.mark.gen_test(timeout=30)
async def test_a_stream_opened_while_the_job_is_queued_gets_its_output(instance, tmp_path):
    # The stream used to keep the queued job's placeholder log: no chunk at all, and a final
    # job with empty stdout, though the command wrote.
    blocker = await submit(instance, {"args": [PY, "-c", gated((1, "a"), (1, "b")),
                                               str(tmp_path)]})
    job = await submit(instance, {"args": ["sh", "-c", "echo started; echo oops >&2"]})
    assert (blocker["state"], job["state"]) == ("running", "queued")
    items = []
    answered = asyncio.get_running_loop().create_future()

    def header(line):
        if line == "\r\n" and not answered.done():
            answered.set_result(None)

    streaming = asyncio.ensure_future(instance.request(
        "GET", f"/jobs/{job['id']}/output", streaming_callback=items.append,
        header_callback=header))
    await answered  # the stream has begun while the job still waits for its slot
    assert (await get_job(instance, job["id"]))["state"] == "queued"
    (tmp_path / "gate1").touch()  # the blocker ends, the queued job starts
    response = await streaming
    assert response.code == 200
    lines = ndjson(b"".join(items))
    assert [untimed(line) for line in lines[:-1]] == [
        {"stream": "stdout", "data": "started\n"}, {"stream": "stderr", "data": "oops\n"}]
    assert lines[-1]["stdout"] == "started\n" and lines[-1]["state"] == "exited"

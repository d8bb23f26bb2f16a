"""The output stream's chunk times (``t``): on each chunk sent live, when the instance read
it; absent on what is replayed (written before the stream began, whose time the log does
not keep). That ``trun`` reads it as before: tests/client/test_trun_stream_times.py.
"""

import json
import time

import pytest
from helpers import submit, wait_for


def items(body):
    return [json.loads(line) for line in body.decode().splitlines()]


@pytest.mark.gen_test(timeout=30)
async def test_live_chunks_carry_their_time_and_replayed_ones_none(instance, tmp_path):
    gate = tmp_path / "gate"
    job = await submit(instance, {"args": ["sh", "-c", f"echo before; {wait_for(gate)}; "
                                           "echo after"]})
    seen = []
    opened = None

    def follow(chunk):
        nonlocal opened
        for line in chunk.decode().splitlines():  # small chunks: one line per HTTP chunk
            seen.append(json.loads(line))
            if seen[-1].get("data") == "before\n" and opened is None:
                opened = time.time()
                gate.touch()

    response = await instance.request("GET", f"/jobs/{job['id']}/output",
                                      streaming_callback=follow)
    assert response.code == 200
    first, second, final = seen
    assert first["data"] == "before\n" and second["data"] == "after\n"
    assert final["state"] == "exited"
    # "before" may have been written before the stream began (then it has no time): "after"
    # was written after the gate opened, and read by the instance within a second of it.
    assert opened - 0.01 <= second["t"] <= opened + 5, (opened, second)
    assert "t" not in first or first["t"] <= second["t"]
    # Replayed once the job ended: the same text (one stream's run of chunks as one), no times.
    replay = await instance.request("GET", f"/jobs/{job['id']}/output",
                                    headers={"Accept": "text/event-stream"})
    events = [json.loads(e[len("data: "):]) for e in replay.body.decode().split("\n\n") if e]
    assert events[0] == {"stream": "stdout", "data": "before\nafter\n"}
    assert events[1]["state"] == "exited"

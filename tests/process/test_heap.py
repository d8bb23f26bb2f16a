"""After a large output the instance gives its freed heap back (malloc_trim), once per burst,
and what callers who left in the middle of a large response left behind."""

import asyncio
import json
import socket
import struct
import time

import pytest
from helpers import post_run_blocking, wait_until

from taskrunner.process.heap import LARGE_OUTPUT, HeapTrimmer


@pytest.mark.gen_test(timeout=30)
async def test_a_large_output_is_followed_by_one_trim_and_a_small_one_by_none(instance):
    trimmer = instance.server.trimmer
    if not trimmer.available:
        pytest.skip("this C library has no malloc_trim")
    trimmer.delay = 0.5
    code, body = await instance.run({"args": ["echo", "small"]})
    assert code == 200 and body["stdout"] == "small\n"
    await asyncio.sleep(0.7)
    assert trimmer.trims == 0

    big = ["head", "-c", str(LARGE_OUTPUT), "/dev/zero"]
    results = await asyncio.gather(*(instance.run({"args": big}) for _ in range(4)))
    assert all(code == 200 and len(body["stdout"]) == LARGE_OUTPUT for code, body in results)
    await asyncio.sleep(1.0)
    assert trimmer.trims == 1  # four large outputs in a burst: one trim


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def read_some_then_reset(port: int, body: dict) -> None:
    """Ask for a large result, read its first bytes, then reset the connection (SO_LINGER 0):
    the instance's write fails midway, as when a caller gives up on a large response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        data = json.dumps(body).encode()
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_callers_who_leave_mid_response_leave_no_memory_behind(spawn_instance):
    # Such a write ends in an exception whose traceback holds the response, in a reference
    # cycle with the connection: only the cyclic GC frees it. The instance did not run one
    # for a long time (until enough new objects), and idle, never: it kept 13 MiB per
    # abandoned 2 MiB result.
    if not HeapTrimmer().available:
        pytest.skip("this C library has no malloc_trim")
    child = spawn_instance()
    two_mib = {"args": ["head", "-c", str(2 << 20), "/dev/zero"]}  # 12 MiB of JSON ("\u0000")
    assert post_run_blocking(child.port, two_mib)[0] == 200
    time.sleep(1.5)  # the trim after it
    baseline = rss_mib(child.proc.pid)
    for _ in range(10):
        read_some_then_reset(child.port, two_mib)
    assert wait_until(lambda: rss_mib(child.proc.pid) < baseline + 30, timeout=5), (
        f"RSS {rss_mib(child.proc.pid):.0f} MiB, {baseline:.0f} before 10 abandoned results")

"""Idle connections and trickled requests are bounded by timeouts and never block others;
a stranger's (no valid token) refused body is drained for a bounded time, then answered.
Strangers against the connection cap: tests/listener/test_connection_cap.py."""

import http.client
import json
import socket
import time
import urllib.request

import pytest
from helpers import closed_by_server

IDLE = 300


def post_run(url, args, timeout=10):
    body = json.dumps({"args": args}).encode()
    started = time.monotonic()
    with urllib.request.urlopen(urllib.request.Request(url + "/run", data=body),
                                timeout=timeout) as response:
        return response.status, json.loads(response.read()), time.monotonic() - started


def trickle(sock, data, seconds):
    """Send ``data`` a byte every 50 ms; True if the server closed the connection meanwhile."""
    deadline = time.monotonic() + seconds
    for byte in data:
        if time.monotonic() > deadline:
            return False
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return True
        if closed_by_server(sock, 0.05):
            return True
    return False


@pytest.fixture
def child(spawn_instance):
    return spawn_instance("--idle-timeout", "2", "--body-timeout", "2")


def test_hundreds_of_idle_connections_and_a_trickled_body_do_not_stop_others(child):
    idle = [socket.create_connection(("127.0.0.1", child.port)) for _ in range(IDLE)]
    trickler = socket.create_connection(("127.0.0.1", child.port))
    try:
        trickler.sendall(b"POST /run HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n{")
        for _ in range(5):
            status, body, elapsed = post_run(child.url, ["echo", "served"])
            assert (status, body["stdout"]) == (200, "served\n")
            assert elapsed < 1.0  # well under the timeouts that would free a blocked server
        # The server, not the client, ends both once their timeouts pass.
        assert trickle(trickler, b'"args": ' * 100, seconds=6)
        assert all(closed_by_server(sock, 4) for sock in idle)
        status, _, elapsed = post_run(child.url, ["true"])
        assert status == 200 and elapsed < 1.0
    finally:
        for sock in [*idle, trickler]:
            sock.close()


def test_trickled_headers_are_cut_off_by_the_idle_timeout(child):
    sock = socket.create_connection(("127.0.0.1", child.port))
    try:
        started = time.monotonic()
        assert trickle(sock, b"GET /healthz HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 200,
                       seconds=8)
        assert time.monotonic() - started < 4
    finally:
        sock.close()


def test_the_body_timeout_does_not_limit_how_long_a_command_runs(child):
    status, body, elapsed = post_run(child.url, ["sleep", "2.5"])
    assert status == 200 and body["status"] == 0
    assert elapsed >= 2.5


# -- strangers: connections whose requests carry no valid token ---------------------------
# (what the connection cap does with them: tests/listener/test_connection_cap.py)

TOKEN = "slow-clients-token-0123456789"


def test_a_refused_body_is_drained_for_a_second_then_answered_and_closed(spawn_instance):
    child = spawn_instance("--body-timeout", "30", env={"TASKRUNNER_TOKEN": TOKEN})
    with socket.create_connection(("127.0.0.1", child.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n{")
        response = http.client.HTTPResponse(sock)
        response.begin()  # without sending more: answered within the drain budget
        assert response.status == 401 and response.getheader("Connection") == "close"
        assert json.loads(response.read())["error"] == "unauthorized"
        assert 0.8 < time.monotonic() - started < 3  # not --body-timeout
        assert closed_by_server(sock, 5)


def test_a_refused_body_past_64_kib_is_answered_at_once(spawn_instance):
    child = spawn_instance("--body-timeout", "30", env={"TASKRUNNER_TOKEN": TOKEN})
    with socket.create_connection(("127.0.0.1", child.port), timeout=5) as sock:
        # Chunked, so no declared length gives it away: the instance counts, and answers
        # once 64 KiB are in, without waiting for more (nor up to --max-body).
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"20000\r\n" + b"x" * 0x20000 + b"\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 401 and response.getheader("Connection") == "close"
        assert json.loads(response.read())["error"] == "unauthorized"



"""Idle connections and trickled requests are bounded by timeouts and never block others."""

import json
import socket
import time
import urllib.request

import pytest

IDLE = 300


def post_run(url, args, timeout=10):
    body = json.dumps({"args": args}).encode()
    started = time.monotonic()
    with urllib.request.urlopen(urllib.request.Request(url + "/run", data=body),
                                timeout=timeout) as response:
        return response.status, json.loads(response.read()), time.monotonic() - started


def closed_by_server(sock, wait):
    sock.settimeout(wait)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


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

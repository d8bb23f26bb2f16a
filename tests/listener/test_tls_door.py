"""The HTTPS port's door: plain HTTP gets a JSON 400 (not a reset), a connection that sends
nothing or stalls in its handshake is closed by ``--idle-timeout`` and at shutdown, and one
in the doorway counts against ``--max-connections`` and is the first to go."""

import contextlib
import http.client
import json
import signal
import socket
import time

import pytest
from conftest import Certificate
from helpers import https, wait_until


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return {"good": Certificate(str(tmp_path_factory.mktemp("certs")), "good")}


@pytest.mark.parametrize("method,body", [("GET", None), ("POST", b"x" * (20 << 20))])
def test_plain_http_to_the_https_port_gets_a_json_400(spawn_instance, certs, method, body):
    # Tornado alone resets such a connection; the answer depends on overriding its
    # (private) TCPServer._handle_connection, so this fails loudly if that ever moves.
    # The body, larger than the socket buffers, checks the lingering close: the client is
    # still sending when the answer goes out, and must not be reset before it reads it.
    good = certs["good"]
    child = spawn_instance("--certfile", good.cert, "--keyfile", good.key)
    conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=30)
    try:
        conn.request(method, "/run", body)
        response = conn.getresponse()
        assert response.status == 400
        assert response.getheader("Content-Type") == "application/json"
        assert json.loads(response.read())["error"] == "plain_http"
    finally:
        conn.close()
    assert child.proc.poll() is None
    status, body = https(child.port, "POST", "/run", good.cert, {"args": ["echo", "fine"]})
    assert (status, body["stdout"]) == (200, "fine\n")
    assert wait_until(lambda: "plain HTTP from 127.0.0.1 on the HTTPS port" in child.output())
    assert "Traceback" not in child.output()


def test_a_client_that_never_finishes_the_handshake_is_closed(spawn_instance, certs):
    good = certs["good"]
    child = spawn_instance("--certfile", good.cert, "--keyfile", good.key,
                           "--idle-timeout", "1")
    with socket.create_connection(("127.0.0.1", child.port), timeout=30) as silent:
        # While it holds its connection, others are served.
        assert https(child.port, "GET", "/healthz", good.cert)[0] == 200
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):  # closed, with or without a reset
            assert silent.recv(1) == b""
        assert time.monotonic() - started < 25  # by --idle-timeout, not by our timeout
    # One that starts a handshake and stalls in it: closed the same way.
    with socket.create_connection(("127.0.0.1", child.port), timeout=30) as stalled:
        stalled.sendall(b"\x16\x03\x01")
        with contextlib.suppress(ConnectionResetError):
            assert stalled.recv(1) == b""


def test_shutdown_closes_connections_that_sent_nothing(spawn_instance, certs):
    good = certs["good"]
    child = spawn_instance("--certfile", good.cert, "--keyfile", good.key)
    with socket.create_connection(("127.0.0.1", child.port), timeout=30) as silent:
        assert https(child.port, "GET", "/healthz", good.cert)[0] == 200  # it was accepted
        child.signal(signal.SIGTERM)
        assert child.wait(30) == 0
        with contextlib.suppress(ConnectionResetError):
            assert silent.recv(1) == b""


def test_at_max_connections_a_new_https_caller_replaces_an_idle_one(spawn_instance, certs):
    # The cap peeks at idle connections for arriving bytes; on a TLS socket that peek
    # must go to the raw socket (an SSLSocket refuses recv flags).
    good = certs["good"]
    child = spawn_instance("--certfile", good.cert, "--keyfile", good.key,
                           "--max-connections", "2")
    idle = [http.client.HTTPSConnection("localhost", child.port,
                                        context=good.client_context(), timeout=30)
            for _ in range(2)]
    try:
        for conn in idle:
            conn.request("GET", "/healthz")
            assert conn.getresponse().read()
        assert https(child.port, "GET", "/healthz", good.cert, timeout=10)[0] == 200
    finally:
        for conn in idle:
            conn.close()
    # Connections that never sent a byte are held too, and shed first.
    silent = [socket.create_connection(("127.0.0.1", child.port), timeout=30)
              for _ in range(3)]
    try:
        for _ in range(3):
            assert https(child.port, "GET", "/healthz", good.cert, timeout=10)[0] == 200
    finally:
        for sock in silent:
            sock.close()
    assert "Traceback" not in child.output()

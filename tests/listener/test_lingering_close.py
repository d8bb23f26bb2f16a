"""Answers that go out before the request is read — 413, 401, 408, 431 — reach the client:
the instance closes such a connection the way nginx's lingering close does, so the client,
still sending, reads its JSON answer instead of a connection reset. Plain HTTP and HTTPS."""

import http.client
import json
import os
import socket
import time

import httpx
import pytest
from conftest import Certificate
from helpers import wait_until

TOKEN = "early-answers-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIB = 1 << 20


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return Certificate(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture
def plain(spawn_instance):
    return spawn_instance(env={"TASKRUNNER_TOKEN": TOKEN})


@pytest.fixture
def tls(spawn_instance, cert):
    return spawn_instance("--certfile", cert.cert, "--keyfile", cert.key,
                          env={"TASKRUNNER_TOKEN": TOKEN})


def post(conn, path, body, headers):
    """One request on a fresh ``http.client`` connection: (status, headers, JSON body)."""
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


def lost(send, times):
    """Run ``send`` ``times`` times; the failures, each as its exception's name."""
    failures = []
    for _ in range(times):
        try:
            send()
        except (OSError, http.client.HTTPException, httpx.TransportError) as exc:
            failures.append(type(exc).__name__)
    return failures


# Each of these lost its answer to a reset (8 and 32 MiB: 20 of 20 requests; 2 MiB: some).
@pytest.mark.parametrize("size", [2 * MIB, 8 * MIB, 32 * MIB], ids=["2MiB", "8MiB", "32MiB"])
def test_a_body_over_max_body_gets_its_413_with_http_client(plain, size):
    body = b"x" * size

    def send():
        status, headers, answer = post(
            http.client.HTTPConnection("127.0.0.1", plain.port, timeout=30), "/run", body,
            {**AUTH, "Content-Type": "application/json"})
        assert (status, answer["error"]) == (413, "body_too_large"), answer
        assert headers["Connection"] == "close"

    assert lost(send, 20) == []
    assert "Traceback" not in plain.output()


@pytest.mark.parametrize("size", [2 * MIB, 8 * MIB, 32 * MIB], ids=["2MiB", "8MiB", "32MiB"])
def test_a_body_over_max_body_gets_its_413_with_httpx(plain, size):
    body = b"x" * size
    with httpx.Client(base_url=plain.url, headers=AUTH, timeout=30) as client:
        def send():
            response = client.post("/run", content=body)
            assert (response.status_code, response.json()["error"]) == (413, "body_too_large")

        assert lost(send, 20) == []


@pytest.mark.parametrize("size", [2 * MIB, 8 * MIB, 32 * MIB], ids=["2MiB", "8MiB", "32MiB"])
def test_a_body_over_max_body_gets_its_413_over_https(tls, cert, size):
    body = b"x" * size

    def send():
        status, _, answer = post(
            http.client.HTTPSConnection("localhost", tls.port, timeout=30,
                                        context=cert.client_context()),
            "/run", body, AUTH)
        assert (status, answer["error"]) == (413, "body_too_large"), answer

    assert lost(send, 5) == []


def test_a_401_before_the_body_is_read_arrives(plain):
    # Declared over the limit and without the token: refused at once, the body unread.
    def send():
        status, headers, answer = post(
            http.client.HTTPConnection("127.0.0.1", plain.port, timeout=30), "/run",
            b"x" * (8 * MIB), {})
        assert (status, answer["error"]) == (401, "unauthorized"), answer
        assert headers["Connection"] == "close"

    assert lost(send, 10) == []


def test_a_408_arrives_while_the_client_is_still_sending(spawn_instance):
    child = spawn_instance("--body-timeout", "0.5", "--max-body", str(16 * MIB),
                           env={"TASKRUNNER_TOKEN": TOKEN})
    size = 8 * MIB
    with socket.create_connection(("127.0.0.1", child.port), timeout=30) as sock:
        sock.sendall(f"POST /run HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Length: {size}\r\n\r\n{{".encode())
        time.sleep(1.0)  # the 408 goes out meanwhile; then the rest of the body comes
        sock.sendall(b"x" * (size - 1))
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 408
        assert response.getheader("Connection") == "close"
        assert json.loads(response.read())["error"] == "body_timeout"


def raw_request(sock, data):
    """Send ``data`` as it is and read one response: (status, headers, JSON body)."""
    sock.sendall(data)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, dict(response.getheaders()), json.loads(response.read())


FLOODS = [
    # Tornado dropped both without a word (a bare EOF, or a reset while sending).
    (b"X-Big: " + b"a" * 70_000 + b"\r\n", "larger than the limit of 65536 bytes"),
    (b"".join(b"X-Field-%d: v\r\n" % i for i in range(150)), "151 header fields"),  # with Host
]


@pytest.mark.parametrize("headers,says", FLOODS, ids=["big", "many"])
def test_a_header_flood_gets_a_json_431(plain, headers, says):
    with socket.create_connection(("127.0.0.1", plain.port), timeout=30) as sock:
        status, response_headers, answer = raw_request(
            sock, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n")
    assert (status, answer["error"]) == (431, "headers_too_large")
    assert says in answer["message"]
    assert response_headers["Content-Type"] == "application/json"
    assert response_headers["Connection"] == "close"
    # Nothing else suffered, and the instance says what it did.
    assert post(http.client.HTTPConnection("127.0.0.1", plain.port, timeout=10), "/run",
                json.dumps({"args": ["true"]}), AUTH)[0] == 200
    assert wait_until(lambda: "answered 431" in plain.output())
    assert "Traceback" not in plain.output()


@pytest.mark.parametrize("headers,says", FLOODS, ids=["big", "many"])
def test_a_header_flood_gets_a_json_431_over_https(tls, cert, headers, says):
    raw = socket.create_connection(("127.0.0.1", tls.port), timeout=30)
    with cert.client_context().wrap_socket(raw, server_hostname="localhost") as sock:
        status, _, answer = raw_request(
            sock, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n")
    assert (status, answer["error"]) == (431, "headers_too_large")
    assert says in answer["message"]


def test_a_header_flood_still_sending_reads_its_431(plain):
    # 4 MiB of header: the instance answers after 64 KiB, while the client still sends.
    with socket.create_connection(("127.0.0.1", plain.port), timeout=30) as sock:
        status, _, answer = raw_request(
            sock, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * (4 * MIB)
            + b"\r\n\r\n")
    assert (status, answer["error"]) == (431, "headers_too_large")


def test_a_body_sent_to_a_route_that_takes_none_is_not_buffered(plain):
    # Tornado read such a body whole into memory before any handler ran, unbounded: 256 MiB
    # sent to the public /healthz made the instance 256 MiB larger.
    def rss_mib():
        with open(f"/proc/{plain.proc.pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) >> 10

    before = rss_mib()
    with socket.create_connection(("127.0.0.1", plain.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n"
                     % (1 << 40))
        chunk = b"x" * MIB
        answer = b""
        for _ in range(256):
            try:
                sock.sendall(chunk)
            except OSError:
                break  # closed once the lingering close had dropped its share
        sock.settimeout(5)
        try:
            while chunk_read := sock.recv(65536):
                answer += chunk_read
        except OSError:
            pass
    assert rss_mib() - before < 64
    assert answer.startswith(b"HTTP/1.1 413 ") and b"takes no request body" in answer


def test_a_small_body_on_a_route_that_takes_none_is_dropped_and_served(plain):
    conn = http.client.HTTPConnection("127.0.0.1", plain.port, timeout=10)
    try:
        conn.request("GET", "/healthz", body=b"x" * 1000)
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["status"] == "ok"
        conn.request("GET", "/healthz")  # the same connection: still usable
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_a_slow_body_on_a_route_that_takes_none_is_cut_off_in_a_second(plain):
    with socket.create_connection(("127.0.0.1", plain.port), timeout=30) as sock:
        started = time.monotonic()
        status, headers, answer = raw_request(
            sock, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nx")
        assert (status, answer["error"]) == (408, "body_timeout")
        assert headers["Connection"] == "close"
        assert time.monotonic() - started < 3


def test_early_answers_over_tls_leave_no_descriptor_behind(tls, cert):
    def fds():
        return len(os.listdir(f"/proc/{tls.proc.pid}/fd"))

    before = fds()
    for _ in range(5):
        status, _, _ = post(http.client.HTTPSConnection("localhost", tls.port, timeout=30,
                                                        context=cert.client_context()),
                            "/run", b"x" * (2 * MIB), AUTH)
        assert status == 413
    assert wait_until(lambda: fds() <= before, 10), (fds(), before)

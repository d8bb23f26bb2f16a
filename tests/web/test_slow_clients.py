"""Idle connections and trickled requests are bounded by timeouts and never block others;
strangers (no valid token) trickling refused bodies cannot keep a token holder waiting."""

import asyncio
import http.client
import json
import socket
import threading
import time
import urllib.request

import pytest
from helpers import wait_until

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


# -- strangers: connections whose requests carry no valid token ---------------------------

TOKEN = "slow-clients-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def authorized_run(port, timeout=5):
    """``POST /run`` of ``true`` with the token, on a new connection: (status, seconds)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/run", json.dumps({"args": ["true"]}), AUTH)
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        conn.close()


class Tricklers:
    """``count`` strangers, each sending ``POST /run`` without a token and then its body a
    byte a second; one whose connection ends connects again a moment later (``pause``
    seconds). Runs on an event loop of its own, in a thread, until the ``with`` ends."""

    def __init__(self, port: int, count: int, pause: float) -> None:
        self.port = port
        self.count = count
        self.pause = pause
        self.connections = 0
        self.answers: list[bytes] = []
        self.stopping = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._main(),), daemon=True)

    def __enter__(self) -> "Tricklers":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True  # each stranger stops within a second
        self._thread.join(30)
        assert not self._thread.is_alive()
        self._loop.close()

    async def _main(self) -> None:
        await asyncio.gather(*(self._stranger() for _ in range(self.count)))

    async def _stranger(self) -> None:
        while not self.stopping:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 1.0)
            except (OSError, TimeoutError):
                await asyncio.sleep(self.pause)  # the backlog is full: knock again
                continue
            self.connections += 1
            try:
                writer.write(b"POST /run HTTP/1.1\r\nHost: localhost\r\n"
                             b"Content-Type: application/json"
                             b"\r\nContent-Length: 100000\r\n\r\n{")
                while not self.stopping:
                    try:
                        data = await asyncio.wait_for(reader.read(4096), 1.0)
                    except TimeoutError:
                        writer.write(b" ")  # one more byte of the body, a second later
                        continue
                    if not data:
                        break  # closed: connect again
                    self.answers.append(data)
            except OSError:
                pass  # reset: connect again
            finally:
                writer.close()
            await asyncio.sleep(self.pause)


def test_a_token_holder_is_served_within_a_second_while_200_strangers_trickle(
        spawn_instance):
    # With --max-connections 20, 25 such strangers used to keep a token holder waiting
    # up to --body-timeout (60 s by default, and again for each new stranger).
    child = spawn_instance("--max-connections", "20", env={"TASKRUNNER_TOKEN": TOKEN})
    with Tricklers(child.port, 200, pause=0.2) as strangers:
        assert wait_until(lambda: strangers.connections >= 200, 20)
        time.sleep(2)  # every stranger is trickling its body
        results = [authorized_run(child.port) for _ in range(10)]
        print(f"\ntoken holder's /run under 200 tricklers: "
              f"{', '.join(f'{seconds:.3f}' for _, seconds in results)} s")
        assert all(status == 200 for status, _ in results), results
        assert max(seconds for _, seconds in results) < 1.0, results
    assert any(b" 401 " in answer for answer in strangers.answers)
    output = child.output()
    assert "Traceback" not in output and " 500 " not in output


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


def test_strangers_cannot_take_more_than_half_the_cap_from_token_holders(spawn_instance):
    # Idle keep-alive connections of a token holder used to be the first shed at the cap
    # (they were idle longest) when strangers connected.
    child = spawn_instance("--max-connections", "8", env={"TASKRUNNER_TOKEN": TOKEN})
    kept = [http.client.HTTPConnection("127.0.0.1", child.port, timeout=10)
            for _ in range(3)]
    strangers = []
    try:
        for conn in kept:
            conn.request("GET", "/jobs", headers=AUTH)
            assert conn.getresponse().read()
        sockets = [conn.sock for conn in kept]
        for _ in range(30):  # strangers that connect and say nothing, or ask /healthz
            sock = socket.create_connection(("127.0.0.1", child.port), timeout=10)
            strangers.append(sock)
            if len(strangers) % 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert authorized_run(child.port)[0] == 200  # room for a new token holder too
        for conn, sock in zip(kept, sockets, strict=True):
            conn.request("GET", "/jobs", headers=AUTH)
            assert conn.getresponse().status == 200
            assert conn.sock is sock, "a token holder's idle connection was closed"
        # The strangers that came first were closed for those that came after.
        assert sum(closed_by_server(sock, 0.5) for sock in strangers[:10]) >= 5
    finally:
        for conn in kept:
            conn.close()
        for sock in strangers:
            sock.close()

"""The connection cap (``--max-connections``) and accepting: out of descriptors, accepting
pauses instead of spinning; at the cap, strangers holding idle or trickling connections
cannot make an instance unreachable, nor take more than half the cap from token holders;
busy connections are never shed."""

import asyncio
import contextlib
import http.client
import json
import os
import resource
import socket
import threading
import time

import pytest
from conftest import with_config
from helpers import closed_by_server, processes_running, wait_until
from helpers import post_run_blocking as post

# -- accepting ----------------------------------------------------------------------------

def test_out_of_descriptors_for_connections_pauses_accepting_then_recovers(spawn_instance):
    # A cap above the descriptors, to reach accept()'s EMFILE path.
    child = spawn_instance("--max-connections", "1000", wrapper=["prlimit", "--nofile=48"])
    clients = []
    try:
        for _ in range(60):  # more connections than descriptors: some wait in the backlog
            clients.append(socket.create_connection(("127.0.0.1", child.port), timeout=5))
        assert wait_until(lambda: "cannot accept connections" in child.output())
        time.sleep(1.0)  # ten pauses' worth: a spinning loop would log thousands of lines
        warnings = child.output().count("cannot accept connections")
        assert 1 <= warnings <= 30
        assert "Traceback" not in child.output()
    finally:
        for client in clients:
            client.close()
    # Descriptors are back: the instance serves again, and the waiting connections too.
    status, body = post(child.port, {"args": ["echo", "ok"]})
    assert status == 200 and body["stdout"] == "ok\n"


# -- the cap ------------------------------------------------------------------------------

def client_sockets(pid):
    """How many sockets process ``pid`` has open."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:")
    return count


@contextlib.contextmanager
def idle_connections(port, count):
    """``count`` connections to ``port`` that never send a byte; all closed at the end."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 256)), hard))
    held = []
    try:
        for _ in range(count):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        yield held
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def closed_by_peer(sock):
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_idle_connections_cannot_make_an_instance_unreachable(spawn_instance):
    """1,100 idle connections under a 256-descriptor limit used to leave no descriptor for
    a caller until --idle-timeout (60 s); now the ones idle longest make room for callers.
    """
    child = spawn_instance(wrapper=["prlimit", "--nofile=256"])
    baseline = client_sockets(child.proc.pid)
    busy: list = []  # a caller whose command runs through the flood
    duration = f"2.{time.time_ns() % 10**9:09d}"
    runner = threading.Thread(target=lambda: busy.append(post(child.port, {
        "args": ["sleep", duration], "timeout": 30})))
    runner.start()
    try:
        assert wait_until(lambda: len(processes_running(duration)) == 1)
        with idle_connections(child.port, 1100) as held:
            started = time.monotonic()
            status, body = post(child.port, {"args": ["echo", "served"]}, timeout=10)
            waited = time.monotonic() - started
            assert status == 200 and body["stdout"] == "served\n"
            assert waited < 5.0, waited  # not --idle-timeout (60 s)
            # Bounded: the default cap is 256 - 64 - 4 x max-running(1) = 188 connections.
            assert client_sockets(child.proc.pid) - baseline <= 188
            assert wait_until(lambda: sum(map(closed_by_peer, held)) >= 1100 - 188)
    finally:
        runner.join(30)
    assert busy == [(200, busy[0][1])] and busy[0][1]["status"] == 0  # busy: never shed
    output = child.output()
    assert "closed" in output and "idle connections for new ones" in output
    assert "Traceback" not in output and " 500 " not in output


def test_at_the_cap_with_every_connection_busy_a_new_caller_waits_its_turn(spawn_instance):
    child = spawn_instance("--max-connections", "2")
    baseline = client_sockets(child.proc.pid)
    results: list = []

    def call(seconds):
        results.append(post(child.port, {"args": ["sleep", str(seconds)]}))

    threads = [threading.Thread(target=call, args=(1.5,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: client_sockets(child.proc.pid) - baseline == 2)
        started = time.monotonic()
        status, body = post(child.port, {"args": ["echo", "third"]}, timeout=30)
        # Served once a busy connection was done: not refused, not shed.
        assert status == 200 and body["stdout"] == "third\n"
        assert time.monotonic() - started < 20
        assert client_sockets(child.proc.pid) - baseline <= 2
    finally:
        for thread in threads:
            thread.join(30)
    assert [status for status, _ in results] == [200, 200]
    assert "every connection busy" in child.output()


async def eof_within(reader, seconds):
    """True if the server closed this connection (within ``seconds``)."""
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except TimeoutError:
        return False


@with_config(max_connections=3)
@pytest.mark.gen_test(timeout=60)
async def test_at_the_cap_the_connection_idle_longest_is_shed_first(instance):
    http = instance.server.http

    async def connect():
        reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
        opened.append(writer)
        return reader, writer

    async def get_healthz(reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        return head.split()[1]

    async def held(count):
        deadline = time.monotonic() + 10
        while http.held_connections != count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return http.held_connections

    opened: list = []
    try:
        a, b, c = [await connect() for _ in range(3)]
        assert await held(3) == 3
        assert await get_healthz(*b) == b"200"  # b was used: now c, then a, idle longest
        d = await connect()
        assert await get_healthz(*d) == b"200"
        assert await eof_within(a[0], 10)  # a was idle longest
        assert await held(3) == 3
        e = await connect()
        assert await get_healthz(*e) == b"200"
        assert await eof_within(c[0], 10)  # then c, which was idle longer than b
        assert not await eof_within(b[0], 0.2) and await get_healthz(*b) == b"200"
        assert http.shed_total == 2
    finally:
        for writer in opened:
            writer.close()


def test_max_connections_defaults_to_what_the_descriptors_leave_for_connections(capsys):
    from taskrunner.cli import parse_config
    from taskrunner.listener.descriptors import (
        FD_RESERVE,
        FDS_PER_COMMAND,
        default_max_connections,
    )

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        assert default_max_connections(10) == max(16, soft - FD_RESERVE - FDS_PER_COMMAND * 10)
    assert default_max_connections(10**9) == 16  # never below the floor
    assert parse_config([]).max_connections == 0  # 0: derived at startup
    with pytest.raises(SystemExit):
        parse_config(["--max-connections", "-1"])
    assert "max_connections must be >= 0" in capsys.readouterr().err


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

"""Running out of file descriptors: a 503 the caller can retry, never a 500, a lost child or
a spinning event loop; and connections bounded (--max-connections) so that strangers holding
idle connections cannot make an instance unreachable."""

import asyncio
import contextlib
import errno
import http.client
import json
import os
import resource
import socket
import threading
import time

import deny_syscall
import pytest
from conftest import with_config
from helpers import PY, until, wait_until
from helpers import post_run_blocking as post


def processes_running(argument: str) -> list[int]:
    """Pids of the live (non-zombie) processes whose command line includes ``argument``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                words = f.read().split(b"\0")
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argument.encode() in words and state != "Z":
            found.append(int(name))
    return found


@pytest.mark.gen_test(timeout=90)
async def test_out_of_file_descriptors_is_a_503_and_leaves_nothing_behind(spawn_instance):
    # 64 fds in all: the instance's own take about 20, and each running job 3 (two pipes
    # and a pidfd), so fewer than 20 jobs fit.
    child = spawn_instance("--max-running", "100", "--max-jobs", "100",
                           wrapper=["prlimit", "--nofile=64"])
    duration = f"30.{time.time_ns() % 10**9:09d}"  # a `sleep` argument only this test uses
    started, refused = [], []
    for _ in range(40):
        response = await child.request("POST", "/jobs", {"args": ["sleep", duration]})
        body = json.loads(response.body)
        if response.code == 202:
            started.append(body["id"])
            continue
        assert response.code == 503, response.body
        assert body["error"] == "out_of_resources"
        assert "'sleep'" in body["message"] and "retry" in body["message"]
        assert response.headers["Retry-After"] == "1"
        refused.append(body)
    assert 5 <= len(started) < 20 and len(refused) == 40 - len(started)
    assert len(processes_running(duration)) == len(started)  # none started for a 503

    # Cancel every job: their fds come back and the instance serves commands again.
    for job_id in started:
        response = await child.request("DELETE", f"/jobs/{job_id}")
        assert response.code == 200 and json.loads(response.body)["state"] == "cancelled"
    assert wait_until(lambda: processes_running(duration) == [])
    response = await child.request("POST", "/run", {"args": ["echo", "ok"]})
    assert response.code == 200 and json.loads(response.body)["stdout"] == "ok\n"
    assert "Traceback" not in child.output() and " 500 " not in child.output()


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

    opened: list = []
    try:
        a, b, c = [await connect() for _ in range(3)]
        await until(lambda: http.held_connections == 3)
        assert await get_healthz(*b) == b"200"  # b was used: now c, then a, idle longest
        d = await connect()
        assert await get_healthz(*d) == b"200"
        assert await eof_within(a[0], 10)  # a was idle longest
        await until(lambda: http.held_connections == 3)
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
    from taskrunner.web.connections import FD_RESERVE, FDS_PER_COMMAND, default_max_connections

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        assert default_max_connections(10) == max(16, soft - FD_RESERVE - FDS_PER_COMMAND * 10)
    assert default_max_connections(10**9) == 16  # never below the floor
    assert parse_config([]).max_connections == 0  # 0: derived at startup
    with pytest.raises(SystemExit):
        parse_config(["--max-connections", "-1"])
    assert "max_connections must be >= 0" in capsys.readouterr().err


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process whose parent is ``pid``, zombies included."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(name), fields[0]))
    return found


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(not deny_syscall.supported(), reason="the seccomp filter knows x86-64 "
                    "and arm64 only")
def test_a_spawn_that_fails_after_the_child_exists_kills_reaps_and_closes(spawn_instance):
    # pidfd_open answers EMFILE, as it does when another thread took the fds the spawn
    # freed: the child runs by then, and its exit could not be watched.
    child = spawn_instance(wrapper=[PY, deny_syscall.__file__, str(deny_syscall.PIDFD_OPEN),
                                    str(errno.EMFILE), "--"])
    pid = child.proc.pid
    duration = f"30.{time.time_ns() % 10**9:09d}"  # a `sleep` argument only this test uses
    requests = [
        ("/run", {"args": ["sleep", duration]}),                 # posix_spawn
        ("/run", {"args": ["sleep", duration], "cwd": "/"}),     # Popen
        ("/run", {"args": ["sleep", duration], "stdin": "x"}),   # a stdin pipe too
        ("/jobs", {"args": ["sleep", duration]}),
    ]

    def refused(path, body):
        conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=30)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
        finally:
            conn.close()
        assert response.status == 503, answer
        assert answer["error"] == "out_of_resources" and "'sleep'" in answer["message"]
        assert response.getheader("Retry-After") == "1"
        # Killed and reaped before the answer: nothing of it runs, no zombie is left.
        assert processes_running(duration) == []
        assert [state for _, state in children(pid) if state == "Z"] == []

    refused(*requests[0])  # the first failure makes what stays (the epoll set)
    baseline = open_fds(pid)
    for _ in range(5):
        for path, body in requests:
            refused(path, body)
    # Every pipe and pidfd of the twenty children was closed (the connections close soon).
    assert wait_until(lambda: open_fds(pid) <= baseline), (open_fds(pid), baseline)
    assert "Traceback" not in child.output() and "not reaped" not in child.output()

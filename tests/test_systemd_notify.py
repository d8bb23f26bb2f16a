"""The notify protocol of ``Type=notify`` (taskrunner/service_manager.py), read as systemd
reads it: from a real AF_UNIX datagram socket given to a real ``python -m taskrunner`` as
``NOTIFY_SOCKET``. No systemd as PID 1 is needed.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from helpers import PY, REPO
from helpers import post_run_blocking as post


class Manager:
    """The service manager's end: a datagram socket, each datagram's ``KEY=value`` lines."""

    def __init__(self, directory: str, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"taskrunner-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = os.path.join(directory, "notify")
            self.sock.bind(self.address)

    def next(self, timeout: float = 20.0) -> list[str]:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode().splitlines()

    def until(self, key: str, timeout: float = 20.0) -> tuple[list[str], list[list[str]]]:
        """The first datagram with ``key``, and those before it."""
        before: list[list[str]] = []
        deadline = time.monotonic() + timeout
        while True:
            lines = self.next(max(0.01, deadline - time.monotonic()))
            if key in lines:
                return lines, before
            before.append(lines)

    def quiet_for(self, seconds: float) -> list[list[str]]:
        """Every datagram that arrives within ``seconds``."""
        got: list[list[str]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.next(left))
            except TimeoutError:
                break
        return got


@pytest.fixture
def manager() -> Iterator[Manager]:
    # A short directory of its own: a socket path has at most 107 bytes.
    directory = tempfile.mkdtemp(prefix="tr-notify-", dir="/tmp")
    made = Manager(directory)
    try:
        yield made
    finally:
        made.sock.close()
        shutil.rmtree(directory)


def _status(lines: list[str]) -> str:
    return next(line.removeprefix("STATUS=") for line in lines if line.startswith("STATUS="))


def test_ready_once_listening_status_watchdog_pings_and_stopping_on_sigterm(
        spawn_instance, manager):
    child = spawn_instance(env={"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "300000"})
    ready, before = manager.until("READY=1")
    assert before == []  # nothing before READY=1
    # Ready means listening and ready: /readyz is 200 at once.
    conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=10)
    conn.request("GET", "/readyz", headers={"Host": "localhost"})
    assert conn.getresponse().status == 200
    conn.close()
    assert _status(ready) == f"serving on 127.0.0.1:{child.port}, 0 running, 0 queued"
    # WATCHDOG=1 every half WATCHDOG_USEC (0.15 s): about 6 in a second, whatever else.
    pings = [d for d in manager.quiet_for(1.0) if "WATCHDOG=1" in d]
    assert 4 <= len(pings) <= 9, pings
    child.signal(signal.SIGTERM)
    stopping, _ = manager.until("STOPPING=1")
    assert _status(stopping) == "stopping: shutting down"
    assert child.wait(20) == 0


def test_the_status_line_follows_the_running_commands(spawn_instance, manager):
    child = spawn_instance(env={"NOTIFY_SOCKET": manager.address})
    manager.until("READY=1")
    conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=30)
    conn.request("POST", "/run", json.dumps({"args": ["sleep", "2.5"]}),
                 {"Content-Type": "application/json", "Host": "localhost"})
    # The status is looked at every 2 s and sent when it changed.
    lines, _ = manager.until(f"STATUS=serving on 127.0.0.1:{child.port}, 1 running, 0 queued",
                             timeout=5)
    assert "WATCHDOG=1" not in lines  # no WatchdogSec, no pings
    assert conn.getresponse().status == 200
    conn.close()


def test_an_abstract_socket_is_spoken_to_and_commands_see_no_service_variables(
        spawn_instance):
    manager = Manager("", abstract=True)
    try:
        child = spawn_instance(env={"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "1000000",
                                    "WATCHDOG_PID": "1", "LISTEN_FDS": "1", "LISTEN_PID": "1"})
        manager.until("READY=1")
        status, body = post(child.port, {"args": ["env"]})
        assert status == 200
        names = {line.partition("=")[0] for line in body["stdout"].splitlines()}
        assert not names & {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                            "LISTEN_PID"}, names
        # Nor the notify socket itself.
        status, body = post(child.port, {"args": ["ls", "/proc/self/fd"]})
        assert status == 200 and body["stdout"].split() == ["0", "1", "2", "3"], body
        # WATCHDOG_PID names another process: no pings are this instance's to send.
        assert not [d for d in manager.quiet_for(0.8) if "WATCHDOG=1" in d]
    finally:
        manager.sock.close()


def test_a_manager_that_went_away_costs_one_warning_not_the_instance(spawn_instance, manager):
    child = spawn_instance(env={"NOTIFY_SOCKET": manager.address + ".gone"})
    status, body = post(child.port, {"args": ["echo", "fine"]})
    assert status == 200 and body["stdout"] == "fine\n"
    child.signal(signal.SIGTERM)
    assert child.wait(20) == 0
    assert child.output().count("service manager notification failed") == 1


def test_a_recycle_says_stopping_once_with_its_reason_and_exits_0(spawn_instance, manager):
    child = spawn_instance(env={"NOTIFY_SOCKET": manager.address})
    manager.until("READY=1")
    child.signal(signal.SIGUSR2)  # recycle: drain, then exit 0 for the supervisor to restart
    stopping, _ = manager.until("STOPPING=1")
    assert _status(stopping) == "stopping: recycling"
    assert child.wait(20) == 0
    # The shutdown that ends a recycle is no second STOPPING=1.
    assert not [d for d in manager.quiet_for(0.2) if "STOPPING=1" in d]


def test_while_the_index_does_not_answer_the_status_says_so_and_no_ready(manager):
    # Port 1 of loopback refuses: the index's server is down. The instance waits for it,
    # not listening and not ready; systemctl status shows why.
    child = subprocess.Popen(
        [PY, "-m", "taskrunner", "--port", "0", "--state-url",
         "postgresql://taskrunner@127.0.0.1:1/jobs"], cwd=REPO,
        env={**os.environ, "NOTIFY_SOCKET": manager.address}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        first = manager.next()
        assert first[0].startswith("STATUS=waiting for the job index: --state-url: cannot use "
                                   "postgresql://taskrunner@127.0.0.1:1/jobs"), first
        assert not [d for d in manager.quiet_for(1.5) if "READY=1" in d]
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(10)

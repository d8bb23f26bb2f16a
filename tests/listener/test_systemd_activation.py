"""Socket activation (taskrunner/listener/activation.py): ``systemd-socket-activate`` binds
the ports and hands the listening sockets to a real ``python -m taskrunner``, which serves
them instead of binding (``LISTEN_FDS``, ``LISTEN_PID``, ``LISTEN_FDNAMES``). No systemd as
PID 1 is needed; ``systemd-socket-activate`` comes with Debian's ``systemd`` package, which
scripts/install brings.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import PY, REPO, wait_until

from taskrunner.web.peers import default_name

ACTIVATE = shutil.which("systemd-socket-activate")
pytestmark = pytest.mark.skipif(
    ACTIVATE is None and not os.environ.get("CI"),
    reason="systemd-socket-activate missing (Debian's systemd package: scripts/install)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def request(host: str, port: int, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, None if body is None else json.dumps(body),
                     {"Host": "localhost", "Content-Type": "application/json",
                      **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


class Activator:
    """``systemd-socket-activate ARGS python -m taskrunner ...`` in a session of its own; it
    starts the instance on the first connection."""

    def __init__(self, args: list[str], instance_args: list[str], tmp: str) -> None:
        self.log_path = os.path.join(tmp, "activate.log")
        self.log = open(self.log_path, "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(ACTIVATE), *args, PY, "-m", "taskrunner", *instance_args], cwd=REPO,
            stdout=self.log, stderr=self.log, start_new_session=True)
        # Listening once it says so; the instance itself starts on the first connection.
        assert wait_until(lambda: "Listening on" in self.output() or self.proc.poll(), 10)
        assert self.proc.poll() is None, self.output()

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def activate(tmp_path) -> Iterator[Any]:
    started: list[Activator] = []

    def start(args: list[str], *instance_args: str) -> Activator:
        started.append(Activator(args, list(instance_args), str(tmp_path)))
        return started[-1]

    yield start
    for each in started:
        each.stop()


def test_the_instance_serves_the_socket_it_was_given(activate):
    port = free_port()
    # --port 0 is what the instance would bind on its own: the given socket wins.
    activated = activate(["-l", f"127.0.0.1:{port}"], "--port", "0")
    status, body = request("127.0.0.1", port, "POST", "/run", {"args": ["env"]})
    assert status == 200, body
    names = {line.partition("=")[0] for line in body["stdout"].splitlines()}
    assert not {n for n in names if n.startswith("LISTEN_")}, names  # never the commands'
    # Nor the socket: a command has its stdio and the fd ls opens, nothing of the instance's.
    status, body = request("127.0.0.1", port, "POST", "/run", {"args": ["ls", "/proc/self/fd"]})
    assert status == 200 and body["stdout"].split() == ["0", "1", "2", "3"], body
    assert request("127.0.0.1", port, "GET", "/readyz") == (200, {"status": "ready"})
    # The log is written by a thread of its own: wait for its lines.
    log = wait_until(lambda: "service manager gave" in (o := activated.output()) and o, 10)
    assert f"listening on 127.0.0.1:{port} " in log  # named after the given port
    assert f"instance {default_name(port)}," in log
    assert "'unknown' 127.0.0.1" in log  # no --fdname: systemd's name for an unnamed fd
    # SIGTERM drains and exits 0, as under systemd.
    os.killpg(activated.proc.pid, signal.SIGTERM)
    assert activated.proc.wait(20) == 0


def test_two_named_sockets_both_answer_and_the_host_rule_knows_their_addresses(activate):
    first, second = free_port(), free_port("127.0.0.2")
    activated = activate(["-l", f"127.0.0.1:{first}", "-l", f"127.0.0.2:{second}",
                          "--fdname=web:local"])
    assert request("127.0.0.1", first, "GET", "/readyz") == (200, {"status": "ready"})
    # 127.0.0.2 is no loopback name the rule always takes: it is known from the socket.
    status, body = request("127.0.0.2", second, "POST", "/run", {"args": ["echo", "two"]},
                           {"Host": f"127.0.0.2:{second}"})
    assert status == 200 and body["stdout"] == "two\n", body
    status, body = request("127.0.0.1", first, "GET", "/readyz",
                           headers={"Host": "rebound.example"})
    assert status == 421 and body["error"] == "host_not_allowed"
    log = wait_until(lambda: "service manager gave" in (o := activated.output()) and o, 10)
    assert f"'web' 127.0.0.1:{first}" in log and f"'local' 127.0.0.2:{second}" in log


def test_a_non_loopback_socket_given_is_held_to_the_rules_of_its_address(activate):
    # Bound on its own it would listen on 127.0.0.1 only; given a loopback socket and a
    # wildcard one, the wildcard's address is the one the rules are applied to.
    port, wide = free_port(), free_port("0.0.0.0")
    activated = activate(["-l", f"127.0.0.1:{port}", "-l", f"0.0.0.0:{wide}"])
    socket.create_connection(("127.0.0.1", port), timeout=10).close()  # starts the instance
    refused = "taskrunner: refusing to listen on '0.0.0.0' without a token"
    assert wait_until(lambda: refused in activated.output(), 10), activated.output()
    assert "Traceback" not in activated.output()


def test_sockets_for_another_process_are_ignored(spawn_instance):
    # LISTEN_PID names another process (inherited from an activated parent): bind as usual.
    child = spawn_instance(env={"LISTEN_FDS": "1", "LISTEN_PID": "1"})
    assert request("127.0.0.1", child.port, "GET", "/readyz") == (200, {"status": "ready"})
    assert "service manager gave" not in child.output()


def test_a_given_fd_that_is_no_listening_socket_is_refused_in_one_line(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("x\n")
    with socket.socket() as unbound:  # a TCP socket, not listening
        for fd, what in ((f'3<"{plain}"', "is no socket: Socket operation on non-socket"),
                         (f"3<&{unbound.fileno()}", "is not a listening TCP socket "
                          "(ListenStream= an address and port, Accept=no)")):
            done = subprocess.run(
                ["bash", "-c", f'LISTEN_PID=$$ LISTEN_FDS=1 exec "{PY}" -m taskrunner {fd}'],
                cwd=REPO, timeout=30, capture_output=True, text=True, check=False,
                pass_fds=(unbound.fileno(),))
            assert done.returncode == 1, done.stderr
            assert done.stderr.strip().splitlines() == [
                f"taskrunner: LISTEN_FDS: fd 3 (unknown) {what}"], done.stderr

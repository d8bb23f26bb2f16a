"""``scripts/stack down`` whatever state the stack is in: supervisord killed, stale pid
files, requests in flight. Ports 18480 and 19285-19288.
"""

import json
import os
import signal
import subprocess
import threading

import pytest
from helpers import pid_alive, wait_until
from stackutil import Stack, children, listening, needs_stack, request, running_stack

pytestmark = needs_stack()

PORT, BASE = 18480, 19285


def stack_pids(stack: Stack) -> list[int]:
    """supervisord, nginx and everything under them (instances, watchdogs, workers), found
    through the pid files of a stack just started and the process tree."""
    supervisord, nginx = stack.pidfile("supervisord.pid"), stack.pidfile("nginx.pid")
    assert supervisord and nginx
    instances = children(supervisord)
    watchdogs = [pid for instance in instances for pid in children(instance)]
    workers = children(nginx)
    assert len(instances) == 4 and len(watchdogs) == 4 and workers
    return [supervisord, nginx, *instances, *watchdogs, *workers]


def assert_nothing_left(stack: Stack, pids: list[int]) -> None:
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert [port for port in [stack.port, *stack.ports] if listening(port)] == []
    assert stack.script("status").returncode != 0


@pytest.mark.parametrize("killed", [("supervisord",), ("supervisord", "nginx")])
def test_down_after_a_kill_9_leaves_nothing(tmp_path, killed):
    with running_stack(str(tmp_path), PORT, BASE) as stack:
        pids = stack_pids(stack)
        victims = [stack.pidfile(f"{name}.pid") for name in killed]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not any(pid_alive(pid) for pid in victims), 10)
        assert all(stack.health(port) for port in stack.ports)  # orphaned, still serving
        done = stack.down()
        assert done.returncode == 0, done.stdout + done.stderr
        assert "stack: down" in done.stdout
        assert_nothing_left(stack, pids)
        # ... so the next up finds its ports free.
        stack.up()


def test_stale_pid_files_neither_block_up_nor_get_a_stranger_killed(tmp_path):
    stranger = subprocess.Popen(["sleep", "300"])  # a process that merely has the pid
    try:
        for name in ("supervisord.pid", "nginx.pid"):
            (tmp_path / name).write_text(f"{stranger.pid}\n")
        with running_stack(str(tmp_path), PORT, BASE) as stack:
            pids = stack_pids(stack)
            for name in ("supervisord.pid", "nginx.pid"):
                (tmp_path / name).write_text(f"{stranger.pid}\n")
            done = stack.down()
            assert done.returncode == 0, done.stdout + done.stderr
            assert_nothing_left(stack, pids)
            assert stranger.poll() is None, "down killed a process that was not the stack's"
            done = stack.down()  # nothing of the stack left: the pid files are no reason
            assert done.returncode == 0, done.stdout + done.stderr
            assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_down_drains_the_instances_before_it_stops_nginx(tmp_path):
    # The instances stop first: they finish what they run (up to --grace) and send the
    # answers through nginx, which stops after them. nginx first made the callers of
    # commands longer than its own stop (10 s) lose their answers.
    answers: dict[str, tuple[int, dict]] = {}

    def call(name: str, args: list[str]) -> None:
        try:
            status, _, body = request("127.0.0.1", PORT, "POST", "/run", {"args": args},
                                      timeout=60)
            answers[name] = (status, json.loads(body))
        except OSError as exc:
            answers[name] = (0, {"error": repr(exc)})

    with running_stack(str(tmp_path), PORT, BASE, args="--grace 4") as stack:
        callers = [
            threading.Thread(target=call, args=("short", ["sh", "-c", "sleep 1; echo done"])),
            threading.Thread(target=call, args=("long", ["sleep", "60"])),
        ]
        for caller in callers:
            caller.start()
        try:
            assert wait_until(lambda: sum((stack.health(p) or {}).get("running", 0)
                                          for p in stack.ports) == 2, 20)
            done = stack.down()
            assert done.returncode == 0, done.stdout + done.stderr
        finally:
            for caller in callers:
                caller.join(60)
    assert answers["short"] == (200, {**answers["short"][1], "status": 0, "stdout": "done\n"})
    status, body = answers["long"]
    assert status == 200, body  # killed at the end of --grace, and told so
    assert body["status"] == -signal.SIGKILL

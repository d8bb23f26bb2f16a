"""Nothing escapes: kill -9 of an instance, and its commands die within a second or two."""

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest
from helpers import pid_alive, wait_until

from taskrunner.process.watchdog import Watchdog, WatchdogError


def start_run(port, args, timeout=60):
    """Send POST /run and return the socket without reading the answer."""
    body = json.dumps({"args": args, "timeout": timeout}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /run HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return sock


def read_pid(path):
    assert wait_until(lambda: os.path.exists(path) and path.read_text().strip(), 10)
    return int(path.read_text())


def watchdog_pid(child):
    match = re.search(r"watchdog pid (\d+)", child.output())
    assert match, child.output()
    return int(match.group(1))


@pytest.mark.parametrize("kill", ["instance", "instance_group"])
def test_kill_9_of_the_instance_kills_its_commands(spawn_instance, tmp_path, kill):
    child = spawn_instance()
    watchdog = watchdog_pid(child)
    sockets, pids = [], []
    try:
        for n in range(3):
            leader, grandchild = tmp_path / f"leader{n}", tmp_path / f"grandchild{n}"
            sockets.append(start_run(child.port, [
                "sh", "-c", f"sleep 100 & echo $! > {grandchild}; echo $$ > {leader}; wait"]))
            pids += [read_pid(leader), read_pid(grandchild)]
        assert all(pid_alive(pid) for pid in pids)
        killed_at = time.monotonic()
        if kill == "instance":
            os.kill(child.proc.pid, signal.SIGKILL)
        else:  # what supervisord's killasgroup does
            os.killpg(child.proc.pid, signal.SIGKILL)
        assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), 2.0)
        elapsed = time.monotonic() - killed_at
        print(f"commands dead {elapsed * 1000:.0f} ms after kill -9 ({kill})")
        assert wait_until(lambda: not pid_alive(watchdog), 2.0)
        assert child.proc.wait(5) == -signal.SIGKILL
        assert "killed 3 command group(s)" in child.output()
    finally:
        for sock in sockets:
            sock.close()
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_after_a_clean_shutdown_the_watchdog_exits_quietly(spawn_instance):
    child = spawn_instance()
    watchdog = watchdog_pid(child)
    assert pid_alive(watchdog)
    child.signal(signal.SIGTERM)
    assert child.wait() == 0
    assert not pid_alive(watchdog)
    assert "killed" not in child.output()


def test_the_watchdog_outlives_signals_meant_for_the_instance(spawn_instance, tmp_path):
    child = spawn_instance()
    watchdog = watchdog_pid(child)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        os.kill(watchdog, sig)
    os.killpg(child.proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the group
    assert child.wait() == 0
    # Gone on EOF, and only then: had a signal killed it, the instance's clean exit would
    # not matter; the kill -9 case below shows it still does its work after the signals.
    assert wait_until(lambda: not pid_alive(watchdog), 2.0)
    child = spawn_instance()
    watchdog = watchdog_pid(child)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        os.kill(watchdog, sig)
    leader = tmp_path / "leader"
    sock = start_run(child.port, ["sh", "-c", f"echo $$ > {leader}; exec sleep 100"])
    try:
        pid = read_pid(leader)
        os.kill(child.proc.pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid), 5.0)
        assert "killed 1 command group(s)" in child.output()
    finally:
        sock.close()
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def open_fds():
    return sorted(os.listdir("/proc/self/fd"))


def test_the_table_grows_and_only_listed_groups_are_killed(tmp_path):
    fds = open_fds()
    procs = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(5)]
    try:
        watchdog = Watchdog(slots=2)
        for proc in procs:
            watchdog.spawned(proc.pid)  # past 2 slots: the table grows
        watchdog.reaped(procs[0].pid)
        watchdog.reaped(procs[1].pid)
        watchdog.spawned(procs[1].pid)  # a freed slot is reused
        watchdog.close()  # as if the instance had died with these four still listed
        for proc in procs[1:]:
            assert proc.wait(5) == -signal.SIGKILL
        assert procs[0].poll() is None
        assert open_fds() == fds
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_the_watchdog_does_not_inherit_the_token(spawn_instance):
    child = spawn_instance(env={"TASKRUNNER_TOKEN": "tok-123456"})
    with open(f"/proc/{watchdog_pid(child)}/environ", "rb") as f:
        assert b"TASKRUNNER_" not in f.read()


def test_the_watchdog_is_a_small_shell_not_a_second_python(spawn_instance):
    child = spawn_instance()
    pid = watchdog_pid(child)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert argv[0] == b"/bin/sh" and argv[1].endswith(b"watchdog.sh")
    with open(f"/proc/{pid}/status") as f:
        rss_kib = int(next(line for line in f if line.startswith("VmRSS:")).split()[1])
    # A Python that imports only os, mmap and signal already holds about 9 MiB; a shell is
    # a fraction of that (dash 1.6 MiB, bash about 4).
    assert rss_kib < 6 * 1024
    assert [int(t) for t in os.listdir(f"/proc/{pid}/task")] == [pid]  # no threads, no helpers
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    assert int(stat[2]) == int(stat[3]) == pid  # a group and a session of its own


def test_an_instance_whose_watchdog_cannot_start_does_not_start(tmp_path):
    fds = open_fds()
    with pytest.raises(WatchdogError, match="cannot start"):
        Watchdog(shell=str(tmp_path / "no-such-shell"))
    # A shell that runs the script with a table fd it does not have: it says so and exits.
    shell = tmp_path / "wrong-fd-shell"
    shell.write_text('#!/bin/sh\nexec /bin/sh "$1" 999\n')
    shell.chmod(0o755)
    with pytest.raises(WatchdogError, match="did not start"):
        Watchdog(shell=str(shell))
    assert open_fds() == fds


def test_a_killed_watchdog_is_replaced_and_the_new_one_knows_the_running_commands(
        spawn_instance, tmp_path):
    child = spawn_instance()
    first = watchdog_pid(child)
    leader = tmp_path / "leader"
    sock = start_run(child.port, ["sh", "-c", f"echo $$ > {leader}; exec sleep 100"])
    pid = None
    try:
        pid = read_pid(leader)  # started under the first watchdog
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: len(re.findall(r"watchdog pid (\d+)", child.output())) == 2,
                          10)
        second = int(re.findall(r"watchdog pid (\d+)", child.output())[1])
        assert second != first and pid_alive(second)
        assert f"the watchdog (pid {first}) died" in child.output()
        os.kill(child.proc.pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid), 5.0)
        # The watchdog says so once the kill is done: a moment after the command is gone.
        assert wait_until(lambda: "killed 1 command group(s)" in child.output(), 5.0)
        assert wait_until(lambda: not pid_alive(second), 5.0)
    finally:
        sock.close()
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)

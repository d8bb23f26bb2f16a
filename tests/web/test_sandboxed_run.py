"""--sandbox as a caller and an operator see it: /run and jobs in a sandbox, the errors, and
an instance killed with kill -9 leaving nothing of its sandboxes behind."""

import json
import os
import pwd
import re
import shutil
import signal
import socket

import pytest
from conftest import processes_with, unique_sleep, with_config
from helpers import pid_alive, post_run_blocking, wait_until

from taskrunner.process.sandbox import sweep_stale_roots

BWRAP = shutil.which("bwrap")
pytestmark = pytest.mark.skipif(BWRAP is None and not os.environ.get("CI"),
                                reason="bubblewrap (bwrap) is not installed: scripts/install")
is_root = os.geteuid() == 0


@pytest.fixture(autouse=True)
def no_work_root_left():
    """An instance a failing test left to the fixture's SIGKILL keeps its work root: remove
    the roots no live instance holds, as the next instance would."""
    yield
    sweep_stale_roots()


def work_root(output):
    for line in output.splitlines():
        if "--sandbox: commands run under" in line:
            return line.split("work directories in ")[1].split(",")[0].rstrip(")")
    raise AssertionError(output)


@pytest.mark.gen_test
@with_config(sandbox=True)
async def test_run_in_a_sandbox_starts_in_a_fresh_work_dir_that_is_removed(instance):
    code, body = await instance.run({"args": ["sh", "-c", "pwd; echo x > out; ls -A; "
                                              "touch /usr/x"]})
    assert code == 200, body
    work, listing = body["stdout"].split()
    assert listing == "out" and "Read-only file system" in body["stderr"]
    assert body["status"] == 1
    assert wait_until(lambda: not os.path.exists(work), 10)


@pytest.mark.gen_test
@with_config(sandbox=True)
async def test_a_program_the_sandbox_cannot_see_is_a_clean_422(instance, tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    code, body = await instance.run({"args": [str(script)]})
    assert code == 422 and body["error"] == "spawn_failed"
    assert "not visible inside the sandbox" in body["message"]
    code, body = await instance.run({"args": ["true"], "cwd": str(tmp_path)})
    assert code == 422 and "working directory" in body["message"]
    code, body = await instance.run({"args": ["no-such-program-xyz"]})
    assert code == 422 and "No such file or directory" in body["message"]


@pytest.mark.gen_test
@with_config(sandbox=True, allow=("sh",))
async def test_the_allowlist_still_holds_and_runs_the_file_it_checked(instance):
    code, body = await instance.run({"args": ["sh", "-c", "readlink /proc/$$/exe"]})
    assert code == 200 and body["stdout"] == os.path.realpath(shutil.which("sh")) + "\n"
    code, body = await instance.run({"args": ["ls"]})
    assert code == 403 and body["error"] == "program_not_allowed"


@pytest.mark.gen_test
@with_config(sandbox=True)
async def test_cancelling_a_job_kills_its_whole_sandbox(instance):
    escapee = unique_sleep()
    response = await instance.request("POST", "/jobs", {"args": [
        "sh", "-c", f"setsid sleep {escapee} & wait"], "timeout": 60})
    assert response.code == 202, response.body
    job = response.headers["Location"]
    assert wait_until(lambda: processes_with(f"sleep {escapee}"), 10)
    response = await instance.request("DELETE", job)
    assert response.code == 200, response.body
    assert wait_until(lambda: not processes_with(f"sleep {escapee}"), 5)


def test_after_kill_9_of_the_instance_nothing_of_its_sandboxes_survives(spawn_instance):
    child = spawn_instance("--sandbox")
    root = work_root(child.output())
    markers = [unique_sleep() for _ in range(4)]
    sockets = []
    try:
        for main, escapee in (markers[:2], markers[2:]):
            body = json.dumps({"args": ["sh", "-c", f"setsid sleep {escapee} & sleep {main}"],
                               "timeout": 60}).encode()
            sock = socket.create_connection(("127.0.0.1", child.port))
            sock.sendall(b"POST /run HTTP/1.1\r\nHost: [::1]\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            sockets.append(sock)
        assert wait_until(lambda: all(processes_with(f"sleep {m}") for m in markers), 10)
        sandboxes = processes_with(root)  # bwrap's processes name the work root
        assert len(sandboxes) >= 4
        os.kill(child.proc.pid, signal.SIGKILL)
        assert wait_until(lambda: not any(processes_with(f"sleep {m}") for m in markers), 5)
        assert wait_until(lambda: not any(pid_alive(pid) for pid in sandboxes), 5)
    finally:
        for sock in sockets:
            sock.close()
        for m in markers:
            for pid in processes_with(f"sleep {m}"):
                os.kill(pid, signal.SIGKILL)
    # What the dead instance could not remove, the next one with --sandbox does.
    assert os.path.isdir(root)
    successor = spawn_instance("--sandbox")
    assert not os.path.exists(root), successor.output()
    stop_cleanly(successor)


def test_a_killed_instance_takes_its_sandboxes_along_where_the_watchdog_cannot(
        spawn_instance):
    # The watchdog is stopped (it cannot act, and the instance does not replace it: it is
    # not dead), then the instance is killed: bubblewrap's parent-death signal alone ends
    # the sandboxes, escapees included.
    child = spawn_instance("--sandbox")
    watchdog = int(re.search(r"watchdog pid (\d+)", child.output()).group(1))
    main, escapee = unique_sleep(), unique_sleep()
    body = json.dumps({"args": ["sh", "-c", f"setsid sleep {escapee} & sleep {main}"],
                       "timeout": 60}).encode()
    sock = socket.create_connection(("127.0.0.1", child.port))
    try:
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        # The sleeps themselves (their argv is "sleep\0<marker>"), not only the sandbox's
        # processes that name them in their arguments.
        assert wait_until(lambda: processes_with(f"sleep\0{main}\0")
                          and processes_with(f"sleep\0{escapee}\0"), 10)
        os.kill(watchdog, signal.SIGSTOP)
        os.kill(child.proc.pid, signal.SIGKILL)
        assert wait_until(lambda: not processes_with(main) and not processes_with(escapee), 5)
        assert pid_alive(watchdog)  # still there, stopped: it did none of this
    finally:
        sock.close()
        os.kill(watchdog, signal.SIGKILL)
        for marker in (main, escapee):
            for pid in processes_with(marker):
                os.kill(pid, signal.SIGKILL)


def stop_cleanly(child):
    """SIGTERM: the instance removes its own work root (the fixture's SIGKILL would not)."""
    child.signal(signal.SIGTERM)
    assert child.wait() == 0
    assert not os.path.exists(work_root(child.output()))


@pytest.mark.skipif(not is_root, reason="needs root to start the instance as nobody")
def test_an_unprivileged_instance_sandboxes_through_a_user_namespace(spawn_instance,
                                                                     reachable_runtime):
    nobody = pwd.getpwnam("nobody")
    child = spawn_instance("--sandbox", runtime=reachable_runtime, wrapper=[
        "setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"])
    try:
        code, body = post_run_blocking(child.port, {"args": [
            "sh", "-c", "id -u; ps -e -o comm= | wc -l; touch /usr/x; echo > ./ok && echo wrote; "
            "mkdir -p locked/deep && touch locked/deep/f && chmod 000 locked/deep locked; pwd"]})
        assert code == 200, body
        uid, count, wrote, work = body["stdout"].split()
        assert int(uid) == nobody.pw_uid and int(count) <= 5 and wrote == "wrote"
        assert "Read-only file system" in body["stderr"]
        # What it left, unreadable directories included, is removed by the instance.
        assert wait_until(lambda: not os.path.exists(work), 10)
    finally:
        stop_cleanly(child)

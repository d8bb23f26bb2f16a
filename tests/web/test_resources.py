"""Running out of file descriptors for commands: a 503 the caller can retry, never a 500 or
a lost child. Descriptors for connections (accepting, --max-connections):
tests/listener/test_connection_cap.py."""

import errno
import http.client
import json
import os
import time

import deny_syscall
import pytest
from helpers import PY, processes_running, wait_until


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

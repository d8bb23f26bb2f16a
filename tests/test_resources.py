"""Running out of file descriptors: a 503 the caller can retry, never a 500, a lost child or
a spinning event loop."""

import json
import os
import socket
import time

import pytest
from conftest import post_run_blocking as post
from conftest import wait_until


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
    child = spawn_instance(wrapper=["prlimit", "--nofile=48"])
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

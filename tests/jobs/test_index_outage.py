"""The PostgreSQL job index stopped and started again under two real instances: /run goes on,
new jobs are refused (503, Retry-After) and start nothing, the jobs already running finish
and their results reach the index once it is back, and each instance logs the outage once.
"""

import asyncio
import contextlib
import functools
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest
from helpers import PY, REPO, get_job, submit, until, wait_done, wait_until


@pytest.mark.gen_test(timeout=120)
async def test_the_index_going_away_loses_no_result_and_stops_no_run(
        spawn_instance, postgres, state_url):
    a = spawn_instance("--instance", "a", "--state-url", state_url)
    b = spawn_instance("--instance", "b", "--state-url", state_url)
    # Finishes while the index is down: its result must reach the index afterwards.
    job = await submit(a, {"args": ["sh", "-c", "sleep 2; echo finished in the dark"]})
    postgres.stop(immediate=True)
    try:
        for _ in range(5):
            response = await a.request("POST", "/run", {"args": ["echo", "still here"]})
            assert (response.code, json.loads(response.body)["stdout"]) == (200, "still here\n")
        for instance in (a, b):
            response = await instance.request("POST", "/jobs", {"args": ["touch", "/never"]})
            assert response.code == 503, response.body
            assert json.loads(response.body)["error"] == "store_unavailable"
            assert response.headers["Retry-After"] == "5"
        listing = await b.request("GET", "/jobs")
        assert listing.code == 503
        assert json.loads(listing.body)["error"] == "store_unavailable"
        done = await wait_done(a, job["id"])  # the owner knows, from memory
        assert done["stdout"] == "finished in the dark\n"
        health = json.loads((await a.request("GET", "/healthz")).body)
        assert health["status"] == "degraded" and health["job_store"]["ok"] is False
        await asyncio.sleep(3)  # several failed retries
    finally:
        postgres.start()

    async def b_sees_the_result():
        response = await b.request("GET", f"/jobs/{job['id']}")
        return response.code == 200 and json.loads(response.body)["state"] == "exited"

    await until(b_sees_the_result, 20)
    shown = await get_job(b, job["id"])
    assert shown["stdout"] == "finished in the dark\n"
    new = await submit(b, {"args": ["true"]})
    await wait_done(b, new["id"])
    for instance in (a, b):
        # Each writer says so at its own next try (at most 5 s apart), not when b has read.
        assert wait_until(lambda instance=instance: re.search(
            r"job store: writes to .* succeed again", instance.output()), 10)
        log = instance.output()
        assert len(re.findall(r"job store: writing .* failed", log)) == 1, log
        assert len(re.findall(r"job store: writes to .* succeed again", log)) == 1, log


@pytest.mark.gen_test(timeout=120)
async def test_after_an_outage_longer_than_lost_after_a_late_sibling_is_not_lost(
        spawn_instance, postgres, state_url):
    # After an outage every heartbeat is old. The first instance whose writes succeed again
    # must not take a sibling that has not written yet for dead: b is held (SIGSTOP) until
    # a is back and has looked, then let go.
    lost_after = 3
    a, b = (spawn_instance("--instance", name, "--lost-after", str(lost_after),
                           "--state-url", state_url) for name in ("a", "b"))
    on_a = await submit(a, {"args": ["sleep", "600"]})
    on_b = await submit(b, {"args": ["sleep", "600"]})
    await until(lambda: seen_running(a, on_b["id"]), 10)
    postgres.stop(immediate=True)
    try:
        await asyncio.sleep(lost_after + 2)
        b.signal(signal.SIGSTOP)
    finally:
        postgres.start()
    try:
        await until(lambda: "succeed again" in a.output(), 20)
        deadline, looks = time.monotonic() + lost_after - 1, 0  # a looks, b still silent
        while time.monotonic() < deadline:
            # A read may still meet a connection the outage broke (503): only answers count.
            if await seen_running(a, on_b["id"], allow_unavailable=True) is not None:
                looks += 1
            listing = await a.request("GET", "/jobs?state=lost")
            if listing.code == 200:
                assert json.loads(listing.body)["jobs"] == [], listing.body
            await asyncio.sleep(0.1)
        assert looks >= 5
    finally:
        b.signal(signal.SIGCONT)
    await until(lambda: "succeed again" in b.output(), 20)
    for instance in (a, b):
        for job in (on_a, on_b):
            await until(functools.partial(seen_running, instance, job["id"], True), 10)


async def seen_running(instance, job_id, allow_unavailable=False):
    """True if ``instance`` shows the job running (never lost); None for a 503 if allowed."""
    response = await instance.request("GET", f"/jobs/{job_id}")
    if response.code == 503 and allow_unavailable:
        return None
    assert response.code == 200, response.body
    state = json.loads(response.body)["state"]
    assert state != "lost", f"a live job of {job_id.split('.')[0]} reported lost"
    return state == "running"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_instance_started_before_its_index_waits_for_it_without_listening(
        postgres, state_url, tmp_path):
    # After a power cut, hosts and their index come back in any order.
    port = free_port()
    log_path = tmp_path / "instance.log"
    postgres.stop(immediate=True)
    with open(log_path, "wb") as log:
        instance = subprocess.Popen(
            [PY, "-m", "taskrunner", "--port", str(port), "--instance", "early",
             "--state-url", state_url], cwd=REPO, stdout=log, stderr=log,
            start_new_session=True)
    try:
        time.sleep(4)
        assert instance.poll() is None, log_path.read_text()
        with socket.socket() as probe:  # no socket that would answer nobody
            assert probe.connect_ex(("127.0.0.1", port)) != 0
        postgres.start()
        assert wait_until(lambda: "listening on" in log_path.read_text(), 20), \
            log_path.read_text()
        status, job = post_json(port, "/jobs", {"args": ["true"]})
        assert status == 202, job
        text = log_path.read_text()
        assert len(re.findall(r"waiting for it", text)) == 1, text
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(instance.pid, signal.SIGKILL)
        instance.wait(10)
        if postgres_stopped(postgres):
            postgres.start()


def test_an_index_that_answers_and_refuses_stops_the_instance_at_once(state_url):
    wrong = state_url.rsplit("/", 1)[0] + "/no_such_database"
    started = time.monotonic()
    done = subprocess.run([PY, "-m", "taskrunner", "--port", "0", "--state-url", wrong],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and time.monotonic() - started < 10
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_database" in lines[0], done.stderr


def post_json(port, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, json.dumps(body))
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def postgres_stopped(postgres):
    return not os.path.exists(os.path.join(postgres.data, "postmaster.pid"))

"""A cluster losing parts under a steady load, for real: a host's power cut
(``scripts/cluster stop-host``: SIGKILL to everything in its namespace at once) and its
return, and the job index (PostgreSQL) stopped and started again.

Needs root (namespaces), nginx, supervisor and PostgreSQL. Front 19690, instances from
18900 on the test's own subnet, PostgreSQL 55520. The tests run in order, on one cluster.
"""

from __future__ import annotations

import os
import time

import pytest
from clusterutil import needs_cluster, running_cluster
from helpers import wait_until
from stackutil import Load

pytestmark = needs_cluster()

# Long enough for the test after the power cut to see the running job still owned (its
# output and cancel: owner_unreachable) before it turns lost.
LOST_AFTER = 6.0
PG_PORT = 55520


@pytest.fixture(scope="module")
def cluster():
    with running_cluster("b", pg_port=PG_PORT, lost_after=LOST_AFTER) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def h1_jobs(cluster):
    """A finished and a running job of instance h1-18900, made on it directly."""
    _, address, port = cluster.instances("h1")[0]
    status, _, finished = cluster.direct(address, port, "POST", "/jobs",
                                         {"args": ["echo", "kept"]})
    assert status == 202, finished
    status, _, running = cluster.direct(address, port, "POST", "/jobs",
                                        {"args": ["sleep", "300"]})
    assert status == 202, running
    assert wait_until(lambda: cluster.direct(address, port, "GET", f"/jobs/{finished['id']}")
                      [2]["state"] == "exited", 5)
    time.sleep(0.5)  # written to the index
    return {"finished": finished["id"], "running": running["id"]}


def job_state(cluster, address, port, job_id):
    status, _, job = cluster.direct(address, port, "GET", f"/jobs/{job_id}")
    return job["state"] if status == 200 else status


def test_stop_host_under_load_fails_only_the_requests_in_flight_on_it(cluster, h1_jobs):
    victims = {f"{address}:{port}" for _, address, port in cluster.instances("h1")}
    with Load(cluster.port, {"args": ["sleep", "0.2"]}, workers=6, name="cut",
              headers=cluster.auth) as load:
        time.sleep(1.5)
        before = time.monotonic()
        done = cluster.script("stop-host", "h1")
        after = time.monotonic()
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("cluster: host h1 stopped: SIGKILL to ")
        time.sleep(3.0)
    outcomes = load.outcomes
    failed = [o for o in outcomes if o.status != 200]
    print(f"\nstop-host: {len(outcomes)} requests, {len(failed)} failed")
    assert len(outcomes) > 50
    assert len(failed) <= load.workers
    for o in failed:
        assert o.status == 502, o
        assert b'"error": "bad_gateway"' in o.body
        assert o.start < after and o.end >= before, o  # in flight when the host died
    assert not [o for o in outcomes if o.start >= after and o.status != 200]
    assert cluster.net.pids("h1") == []
    report = cluster.status()
    assert [h["ok"] for h in report["hosts"]] == [False, True]
    with open(os.path.join(cluster.run_dir, "front", "log", "nginx-access.log")) as f:
        log = f.read()
    for o in failed:
        line = next(line for line in log.splitlines() if f"rid={o.rid} " in line)
        assert line.split(" upstream=", 1)[1].split(" ", 1)[0] in victims


def test_a_running_job_of_the_dead_owner_cannot_be_followed_or_cancelled(cluster, h1_jobs):
    job_id = h1_jobs["running"]
    status, _, body = cluster.call("GET", f"/jobs/{job_id}/output")
    assert (status, body["error"]) == (503, "owner_unreachable"), body
    status, _, body = cluster.call("DELETE", f"/jobs/{job_id}")
    assert (status, body["error"]) == (503, "owner_unreachable"), body


def test_finished_jobs_of_the_dead_host_stay_readable_through_the_front(cluster, h1_jobs):
    status, _, job = cluster.call("GET", f"/jobs/{h1_jobs['finished']}")
    assert status == 200, job
    assert (job["state"], job["stdout"]) == ("exited", "kept\n")


def test_its_running_jobs_turn_lost_on_every_instance(cluster, h1_jobs):
    job_id = h1_jobs["running"]
    others = cluster.instances("h2")
    deadline = time.monotonic() + LOST_AFTER + 5
    while time.monotonic() < deadline:
        states = {job_state(cluster, address, port, job_id) for _, address, port in others}
        if states == {"lost"}:
            break
        time.sleep(0.2)
    assert states == {"lost"}
    status, _, job = cluster.call("GET", f"/jobs/{job_id}")
    assert (status, job["state"]) == (200, "lost")


def test_start_host_brings_it_back_and_it_serves_again(cluster):
    done = cluster.script("start-host", "h1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert cluster.status()["ok"]
    names = {name for name, _, _ in cluster.instances("h1")}
    time.sleep(2.5)  # nginx tries a failed server again after fail_timeout=2s

    def seen():
        return names <= {cluster.call("GET", "/healthz")[2]["instance"] for _ in range(16)}
    assert wait_until(seen, 10)
    owners = set()
    for _ in range(8):
        status, _, job = cluster.call("POST", "/jobs", {"args": ["true"]})
        assert status == 202, job
        owners.add(job["id"].split(".")[0])
    assert owners & names


def test_the_index_stopped_and_started_under_load(cluster):
    status, _, late = cluster.call("POST", "/jobs", {"args": ["sh", "-c", "sleep 2; echo late"]})
    assert status == 202, late
    index = cluster.index
    with Load(cluster.port, {"args": ["true"]}, workers=4, name="pgdown",
              headers=cluster.auth) as load:
        time.sleep(1.0)
        index.stop()
        try:
            def refused():
                status, headers, body = cluster.call("POST", "/jobs", {"args": ["true"]})
                return (status, headers, body) if status != 202 else None
            answer = wait_until(refused, 10)
            assert answer, "POST /jobs still accepted with the index down"
            status, headers, body = answer
            assert (status, body["error"]) == (503, "store_unavailable"), body
            assert int(headers["Retry-After"]) >= 1
            time.sleep(3.0)  # the late job finishes while the index is down
        finally:
            index.start()
        time.sleep(1.0)
    outcomes = load.outcomes
    bad = [o for o in outcomes if o.status != 200]
    print(f"\nindex outage: {len(outcomes)} /run requests, {len(bad)} not 200")
    assert len(outcomes) > 50
    assert bad == [], bad[:3]

    def accepted():
        return cluster.call("POST", "/jobs", {"args": ["true"]})[0] == 202
    assert wait_until(accepted, 20), "POST /jobs not accepted again after the index came back"

    def finished():
        status, _, job = cluster.call("GET", f"/jobs/{late['id']}")
        return job if status == 200 and job["state"] == "exited" else None
    job = wait_until(finished, 20)
    assert job, "the job that finished during the outage was lost"
    assert job["stdout"] == "late\n"

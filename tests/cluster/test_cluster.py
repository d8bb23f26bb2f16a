"""A cluster for real: ``scripts/cluster up`` with two hosts (network namespaces, each with
supervisord and two instances), PostgreSQL as the shared job index, nginx in front.
Requests through the front reach every host; jobs made through it are seen by every host,
followed and cancelled through it; a host is added under load without a dropped request;
``down`` leaves nothing behind.

Needs root (namespaces), nginx, supervisor and PostgreSQL. Front 19690, instances from
18900 on the test's own subnet, PostgreSQL 55510.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time

import pytest
from clusterutil import CLUSTER, FRONT_PORT, needs_cluster, running_cluster
from helpers import pid_alive, wait_until
from stackutil import Load, listening

from lab.netns import listening as listening_anywhere

pytestmark = needs_cluster()

PG_PORT = 55510


@pytest.fixture(scope="module")
def cluster():
    with running_cluster("a", pg_port=PG_PORT) as cluster:
        yield cluster


def wait_job(cluster, job_id, timeout=15):
    def done():
        status, _, job = cluster.call("GET", f"/jobs/{job_id}")
        assert status == 200, job
        return job if job["state"] not in ("queued", "running") else None
    job = wait_until(done, timeout)
    assert job, f"job {job_id} still running"
    return job


def test_up_reports_every_part(cluster):
    report = cluster.status()
    assert report["ok"], report
    assert report["front"]["pid"] and report["index"]["url"].endswith(f":{PG_PORT}/taskrunner")
    assert [h["name"] for h in report["hosts"]] == ["h1", "h2"]
    for number, host in enumerate(report["hosts"], 1):
        assert host["supervisord_pid"]
        address = cluster.net.host_address(number)
        assert [(i["name"], i["address"]) for i in host["instances"]] == [
            (f"{host['name']}-18900", f"{address}:18900"),
            (f"{host['name']}-18901", f"{address}:18901")]
        assert all(i["pid"] for i in host["instances"])
    done = cluster.script("status")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"front  up    http://127.0.0.1:{FRONT_PORT}  nginx pid ")


def test_mistakes_are_one_line_errors(cluster):
    done = cluster.script("up", *cluster.up_args)
    assert done.returncode == 2
    assert done.stderr == (f"cluster: a cluster is already in {cluster.run_dir} "
                           "(cluster.json): 'scripts/cluster down' first\n")
    for command in ("stop-host", "start-host"):
        done = cluster.script(command, "h9")
        assert done.returncode == 2
        assert done.stderr == "cluster: no host 'h9' in the inventory (hosts: h1, h2)\n"
    done = cluster.script("start-host", "h1")
    assert (done.returncode, done.stderr) == (
        2, "cluster: host h1 is running ('scripts/cluster stop-host h1' first)\n")
    assert cluster.status()["ok"]


def test_the_hosts_run_what_print_host_prints(cluster):
    for host in ("h1", "h2"):
        directory = os.path.join(cluster.run_dir, "hosts", host)
        printed = subprocess.run(
            [CLUSTER, "print-host", host, "--inventory",
             os.path.join(cluster.run_dir, "cluster.toml"), "--python", sys.executable,
             "--run-dir", directory, "--log-dir", os.path.join(directory, "log")],
            capture_output=True, text=True, check=True).stdout
        with open(os.path.join(directory, "supervisord.conf")) as f:
            assert f.read().endswith(printed)


def test_requests_reach_instances_on_every_host(cluster):
    names = {name for name, _, _ in cluster.instances()}
    seen = {cluster.call("GET", "/healthz")[2]["instance"] for _ in range(16)}
    assert seen == names
    addresses = set()
    for _ in range(8):
        status, _, body = cluster.call("POST", "/run", {"args": ["hostname", "-I"]})
        assert status == 200, body
        addresses.add(body["stdout"].strip())
    assert addresses == {cluster.net.host_address(1), cluster.net.host_address(2)}


def test_a_job_made_through_the_front_is_listed_by_an_instance_of_another_host(cluster):
    owners = {}
    for _ in range(6):
        status, _, job = cluster.call("POST", "/jobs", {"args": ["echo", "listed"]})
        assert status == 202, job
        owners[job["id"]] = job["id"].split("-")[0]
    assert set(owners.values()) == {"h1", "h2"}
    for job_id, owner in owners.items():
        other = "h2" if owner == "h1" else "h1"
        _, address, port = cluster.instances(other)[0]
        status, _, listing = cluster.direct(address, port, "GET", "/jobs?limit=100")
        assert status == 200, listing
        assert job_id in {j["id"] for j in listing["jobs"]}
        status, _, got = cluster.direct(address, port, "GET", f"/jobs/{job_id}")
        assert status == 200 and got["id"] == job_id


def test_a_job_is_polled_followed_and_cancelled_through_the_front(cluster):
    status, _, job = cluster.call("POST", "/jobs",
                                  {"args": ["sh", "-c", "echo one; sleep 1.5; echo two"]})
    assert status == 202, job
    conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=10)
    start = time.monotonic()
    conn.request("GET", f"/jobs/{job['id']}/output", headers=cluster.auth)
    response = conn.getresponse()
    assert response.status == 200
    first = json.loads(response.readline())
    first.pop("t", None)  # the time of a chunk sent live
    assert first == {"stream": "stdout", "data": "one\n"}
    assert time.monotonic() - start < 1.0, "buffered by nginx?"
    lines = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    conn.close()
    assert {"stream": "stdout", "data": "two\n"} in [
        {k: v for k, v in line.items() if k != "t"} for line in lines]
    assert lines[-1]["state"] == "exited"
    assert wait_job(cluster, job["id"])["stdout"] == "one\ntwo\n"

    status, _, job = cluster.call("POST", "/jobs", {"args": ["sleep", "30"]})
    assert status == 202, job
    status, _, cancelled = cluster.call("DELETE", f"/jobs/{job['id']}")
    assert status == 200, cancelled
    assert (cancelled["state"], cancelled["status"]) == ("cancelled", -9)


def test_a_host_added_under_load_gets_requests_and_none_is_dropped(cluster):
    # nginx's reload: new workers take the new config, the old ones finish what they
    # carry. A client on a new connection for each request sees nothing; one that keeps
    # its connection may find it closed by an old worker while idle, before it sent
    # anything (no answer at all, never a 502): it opens a new one, as after any server's
    # idle close.
    body = {"args": ["true"]}
    with (Load(cluster.port, body, workers=3, name="fresh", headers=cluster.auth,
               fresh=True) as fresh,
          Load(cluster.port, body, workers=2, name="kept", headers=cluster.auth) as kept):
        time.sleep(1.0)
        done = cluster.script("add-host")
        assert done.returncode == 0, done.stdout + done.stderr
        added_at = time.monotonic()
        assert "host h3 added" in done.stdout
        time.sleep(2.0)
    bad = [o for o in fresh.outcomes if o.status != 200]
    closed = [o for o in kept.outcomes if o.status != 200]
    print(f"\nadd-host: {len(fresh.outcomes)} requests on new connections, {len(bad)} failed; "
          f"{len(kept.outcomes)} on kept connections, {len(closed)} found them closed")
    assert len(fresh.outcomes) > 30 and len(kept.outcomes) > 30
    assert bad == [], bad[:3]
    for o in closed:
        assert o.status == 0 and re.match(rb"(BrokenPipe|ConnectionReset|RemoteDisconnected)",
                                          o.body), o
    assert len(closed) <= kept.workers
    assert [o for o in fresh.outcomes if o.start > added_at]
    names = {name for name, _, _ in cluster.instances("h3")}
    assert names == {"h3-18900", "h3-18901"}
    seen = {cluster.call("GET", "/healthz")[2]["instance"] for _ in range(24)}
    assert names <= seen


def test_down_leaves_no_process_namespace_veth_address_or_port(cluster):
    namespaces = cluster.net.namespaces()
    assert len(namespaces) == 3
    pids = [pid for ns in namespaces for pid in cluster.net.pids(ns.split("-", 1)[1])]
    pids.append(cluster.status()["front"]["pid"])
    with open(os.path.join(cluster.run_dir, "pg", "data", "postmaster.pid")) as f:
        pids.append(int(f.readline()))
    assert len(pids) > 8
    done = cluster.down()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("cluster: down")
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert cluster.net.namespaces() == []
    assert cluster.net.devices() == []
    assert cluster.net.addresses() == []
    assert not listening(FRONT_PORT)
    assert listening_anywhere(PG_PORT) is False
    done = cluster.script("status")
    assert done.returncode == 2 and "no cluster in" in done.stderr

"""The stack for real: ``scripts/stack up``, nginx, supervisord, four instances, load.

Needs nginx and supervisor (``scripts/install``). Ports 18080 and 18885-18888.
"""

import json
import os
import re
import resource
import signal
import time

import pytest
from helpers import pid_alive, wait_until
from stackutil import (
    Load,
    Stack,
    children,
    listening,
    needs_stack,
    running_stack,
    upstream_of,
)

pytestmark = needs_stack()

PORT, BASE = 18080, 18885


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(str(tmp_path_factory.mktemp("stack-run")), PORT, BASE) as stack:
        yield stack


def test_up_reports_every_part(stack):
    done = stack.script("status")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nginx:       running" in done.stdout
    for port in stack.ports:
        assert f"taskrunner_{port}" in done.stdout
        assert re.search(rf'"port":\s*{port}\b', done.stdout), done.stdout


def test_requests_reach_all_four_instances(stack):
    seen = set()
    for _ in range(16):
        status, _, body = stack.call("GET", "/healthz")
        assert status == 200
        health = json.loads(body)
        seen.add((health["port"], health["pid"]))
    assert {port for port, _ in seen} == set(stack.ports)
    assert len({pid for _, pid in seen}) == 4


def test_run_through_nginx(stack):
    status, headers, body = stack.call("POST", "/run", {"args": ["echo", "hello"]})
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["stdout"] == "hello\n"
    assert len(headers["X-Request-Id"]) == 32  # made up by nginx


def test_request_id_and_client_reach_the_access_logs(stack):
    rid = "test-rid-42"
    status, headers, _ = stack.call("POST", "/run", {"args": ["true"]},
                                    headers={"X-Request-Id": rid})
    assert status == 200
    assert headers["X-Request-Id"] == rid

    def logged():
        upstream = upstream_of(stack.log("nginx-access.log"), rid)
        if upstream is None:
            return None
        lines = [line for line in stack.instance_log(int(upstream.rsplit(":", 1)[1]))
                 .splitlines() if f"rid={rid} " in line]
        return lines[0] if lines else None

    line = wait_until(logged, 5)  # nginx flushes its access log every second
    assert line is not None
    assert "POST /run 200" in line
    assert "client=127.0.0.1" in line
    assert "program=true exit=0" in line


def test_an_unusable_request_id_is_replaced_by_nginx(stack):
    status, headers, _ = stack.call("GET", "/healthz", headers={"X-Request-Id": "a b"})
    assert status == 200
    assert len(headers["X-Request-Id"]) == 32


def test_nginx_errors_are_json(stack):
    status, headers, body = stack.call("GET", "/jobs/1.abc")
    assert status == 404
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"] == "job_not_found"
    assert headers["X-Request-Id"]

    big = {"args": ["true"], "stdin": "x" * (2 * 1024 * 1024)}
    status, headers, body = stack.call("POST", "/run", big)
    assert status == 413
    assert json.loads(body)["error"] == "body_too_large"


def test_job_routes_go_to_the_owning_instance(stack):
    # Before the jobs API exists the instance answers 404 itself; what matters here is
    # which instance nginx asked.
    for port in stack.ports:
        rid = f"route-{port}"
        stack.call("GET", f"/jobs/{port}.AAAAAAAAAAAAAAAA/output", headers={"X-Request-Id": rid})
        upstream = wait_until(lambda rid=rid: upstream_of(stack.log("nginx-access.log"), rid), 5)
        assert upstream == f"127.0.0.1:{port}"


def test_each_instance_scraped_directly_names_itself(stack):
    port = stack.ports[0]
    status, _, _ = stack.call("GET", "/metrics")
    assert status == 200
    from stackutil import request
    request("127.0.0.1", port, "POST", "/run", {"args": ["true"]})
    request("127.0.0.1", port, "POST", "/run", {"args": ["/nonexistent/program"]})
    status, headers, body = request("127.0.0.1", port, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    # No "instance" label (a Prometheus target has its own); the name is on taskrunner_info.
    assert f'taskrunner_info{{name="{port}",version=' in text
    assert "\ntaskrunner_commands_started_total " in text
    assert "\ntaskrunner_command_spawn_failures_total 1.0\n" in text
    assert '\ntaskrunner_http_requests_total{caller="anonymous",status="422"} 1.0\n' in text
    assert "\ntaskrunner_command_duration_seconds_count " in text


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def test_nginx_reuses_its_buffers_for_large_results(stack):
    # A 1 MiB result passes through ~16 of nginx's 64 KiB proxy buffers. With glibc's
    # default trim threshold a worker gave them back to the kernel after each response and
    # faulted ~130 pages back in for the next; scripts/stack starts nginx so that it keeps
    # them (the cost was a third of nginx's CPU per large response).
    big = {"args": ["sh", "-c", "yes abcdefghijklmnopqrstuvwxyz | head -c 1048576"]}
    for _ in range(6):  # the workers' heaps grow to their working size
        status, _, body = stack.call("POST", "/run", big)
        assert status == 200 and len(json.loads(body)["stdout"]) == 1048576
    workers = children(stack.pidfile("nginx.pid"))
    before = sum(minor_faults(pid) for pid in workers)
    for _ in range(10):
        status, _, _ = stack.call("POST", "/run", big)
        assert status == 200
    faults = sum(minor_faults(pid) for pid in workers) - before
    assert faults < 10 * 64, f"{faults} page faults in nginx for 10 results of 1 MiB"


def test_kill_9_loses_only_requests_in_flight_and_restarts(stack):
    victim = stack.ports[1]
    old_pid = stack.health(victim)["pid"]
    with Load(stack.port, {"args": ["sleep", "0.2"]}, workers=8, name="kill") as load:
        time.sleep(1.5)
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        new = wait_until(lambda: (h := stack.health(victim)) and h["pid"] != old_pid and h, 10)
        restarted_at = time.monotonic()
        assert new, "supervisord did not restart the killed instance"
        time.sleep(4.0)  # nginx tries the instance again after fail_timeout=2s
    outcomes = load.outcomes
    restart_seconds = restarted_at - killed_at
    failed = [o for o in outcomes if o.status != 200]
    print(f"\nkill -9: {len(outcomes)} requests, {len(failed)} failed, "
          f"restarted in {restart_seconds:.2f}s")
    assert restart_seconds < 5
    assert len(outcomes) > 50
    for o in failed:
        assert o.status == 502, o
        assert json.loads(o.body)["error"] == "bad_gateway"
        # In flight on the victim when it died (or written on its connection in the
        # instant before nginx saw it close).
        assert o.start < killed_at + 0.05 and o.end >= killed_at, o
    assert len(failed) <= load.workers
    assert not [o for o in outcomes if o.start >= restarted_at and o.status != 200]
    nginx_log = wait_until(lambda: (log := stack.log("nginx-access.log"))
                         and upstream_of(log, outcomes[-load.workers - 1].rid) and log, 5)
    for o in failed:
        assert upstream_of(nginx_log, o.rid) == f"127.0.0.1:{victim}"
    # The new instance gets requests again.
    late = [o for o in outcomes if o.start > restarted_at + 2.5]
    assert any(upstream_of(nginx_log, o.rid) == f"127.0.0.1:{victim}" for o in late)


def test_down_leaves_no_process_and_no_port(stack: Stack):
    supervisord = stack.pidfile("supervisord.pid")
    nginx = stack.pidfile("nginx.pid")
    assert supervisord and nginx
    workers, instances = children(nginx), children(supervisord)
    assert workers and len(instances) == 4
    helpers = [pid for instance in instances for pid in children(instance)]  # watchdogs
    pids = [supervisord, nginx, *workers, *instances, *helpers]
    done = stack.down()
    assert done.returncode == 0, done.stdout + done.stderr
    alive = [pid for pid in pids if pid_alive(pid)]
    assert alive == []
    assert [port for port in [stack.port, *stack.ports] if listening(port)] == []
    assert not os.path.exists(os.path.join(stack.run_dir, "supervisor.sock"))
    done = stack.script("status")
    assert done.returncode != 0


def test_nginx_workers_get_descriptors_for_their_connections_on_a_1024_file_host(tmp_path):
    # Started with the usual soft limit of 1,024 open files (ports 18680, 19485-19488):
    # nginx raises its workers' own to worker_rlimit_nofile (2 x 4,096 connections + room).
    stack = Stack(str(tmp_path), 18680, 19485)
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, before[1]))
        try:
            stack.up()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, before)
        master = stack.pidfile("nginx.pid")
        workers = children(master)
        assert workers
        for pid in [master, *workers]:
            with open(f"/proc/{pid}/limits") as f:
                line = next(line for line in f if line.startswith("Max open files"))
            soft, hard = line.split()[3:5]
            if pid == master:
                assert soft == "1024", line  # what the stack was started with
            else:
                assert (soft, hard) == ("10240", "10240"), line
        status, _, _ = stack.call("GET", "/healthz")
        assert status == 200
    finally:
        stack.down()

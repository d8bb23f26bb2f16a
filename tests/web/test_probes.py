"""The probes: ``/livez`` answers while the process does; ``/readyz`` is 503 ``not_ready``
while the instance drains (SIGTERM, a recycle) and 200 otherwise, ``degraded`` but still
ready while the job index is down; both public, status only to a stranger, behind the Host
rule.

An instance stops listening as soon as it drains, so a load balancer's probe made after
SIGTERM meets a refused connection; a probe on a connection that was already open gets the
503, once (it says ``Connection: close``). That is what these tests show.
"""

import http.client
import json
import signal
import threading

import pytest
from helpers import post_run_blocking, until, wait_until
from openapi_check import checker

from taskrunner.config import Config
from taskrunner.web import recycle
from taskrunner.web.context import InstanceContext

TOKEN = "probes-token-0123456789"


def get(conn, path, headers=None):
    """``GET path`` on the open connection ``conn``: the response and its JSON body,
    checked against the OpenAPI document."""
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    checker().check("GET", path, response.status, response.headers, body)
    return response, json.loads(body)


def running(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        return get(conn, "/healthz")[1]["running"]
    finally:
        conn.close()


def refused(port):
    fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        fresh.request("GET", "/readyz")
    except ConnectionRefusedError:
        return True
    finally:
        fresh.close()
    return False


@pytest.mark.gen_test
async def test_an_instance_that_is_up_is_live_and_ready(instance):
    live = await instance.request("GET", "/livez")
    assert (live.code, json.loads(live.body)) == (200, {"status": "ok"})
    ready = await instance.request("GET", "/readyz")
    assert (ready.code, json.loads(ready.body)) == (200, {"status": "ready"})
    assert ready.headers["Content-Type"] == "application/json"


def test_after_sigterm_an_open_connection_is_told_not_ready_and_new_ones_are_refused(
        spawn_instance):
    child = spawn_instance("--grace", "30")
    conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=10)
    response, body = get(conn, "/readyz")
    assert (response.status, body) == (200, {"status": "ready"})
    answers = []
    run = threading.Thread(target=lambda: answers.append(
        post_run_blocking(child.port, {"args": ["sleep", "3"]})))
    run.start()
    try:
        assert wait_until(lambda: running(child.port) == 1)
        child.signal(signal.SIGTERM)
        assert wait_until(lambda: "shutting down: waiting" in child.output(), 10)
        assert refused(child.port)
        response, body = get(conn, "/readyz")
        assert response.status == 503
        assert body == {"error": "not_ready", "message": "draining: shutting down"}
        assert response.getheader("Retry-After") == "1"
        assert response.getheader("Connection") == "close"
    finally:
        run.join(30)
        conn.close()
    assert answers and answers[0][0] == 200  # the command in flight finished
    assert child.wait(30) == 0


def test_a_recycling_instance_is_not_ready_on_the_connections_it_still_serves(
        spawn_instance):
    child = spawn_instance()
    conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=10)
    assert get(conn, "/readyz")[0].status == 200
    child.signal(signal.SIGUSR2)
    assert wait_until(lambda: "no longer accepting" in child.output(),
                      recycle.MIN_LIFETIME + 5)
    assert refused(child.port)
    response, body = get(conn, "/readyz")
    assert response.status == 503
    assert body == {"error": "not_ready", "message": "draining: recycling"}
    assert response.getheader("Connection") == "close"
    conn.close()
    assert child.wait(30) == 0


@pytest.mark.gen_test(timeout=90)
async def test_an_unreachable_job_index_is_degraded_but_still_ready(
        spawn_instance, postgres, state_url, tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    child = spawn_instance("--instance", "a", "--state-url", state_url,
                           "--token-file", str(token))
    holder = {"Authorization": f"Bearer {TOKEN}"}
    ready = await child.request("GET", "/readyz", headers=holder)
    assert json.loads(ready.body) == {
        "status": "ready", "job_store": {"ok": True, "write_failures": 0, "error": None}}
    postgres.stop(immediate=True)
    try:
        async def degraded():
            response = await child.request("GET", "/readyz", headers=holder)
            assert response.code == 200, response.body
            return json.loads(response.body)["status"] == "degraded"

        await until(degraded, 30)
        response = await child.request("GET", "/readyz", headers=holder)
        store = json.loads(response.body)["job_store"]
        assert store["ok"] is False and store["write_failures"] >= 1 and store["error"]
        # A stranger (no token, a wrong one) learns the status only.
        for headers in (None, {"Authorization": "Bearer not-the-token"}):
            response = await child.request("GET", "/readyz", headers=headers)
            assert (response.code, json.loads(response.body)) == (200, {"status": "degraded"})
            assert response.headers["Vary"] == "Authorization"
        live = await child.request("GET", "/livez")
        assert (live.code, json.loads(live.body)) == (200, {"status": "ok"})
        run = await child.request("POST", "/run", {"args": ["echo", "still here"]},
                                  headers=holder)
        assert run.code == 200 and json.loads(run.body)["stdout"] == "still here\n"
    finally:
        postgres.start()


@pytest.mark.gen_test
async def test_with_a_token_the_probes_need_none_and_tell_a_stranger_the_status_only(
        spawn_instance, tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    child = spawn_instance("--token-file", str(token))
    for header in (None, "Bearer not-the-token", f"Bearer {TOKEN}"):
        headers = {"Authorization": header} if header else None
        live = await child.request("GET", "/livez", headers=headers)
        assert (live.code, json.loads(live.body)) == (200, {"status": "ok"}), header
        ready = await child.request("GET", "/readyz", headers=headers)
        assert (ready.code, json.loads(ready.body)) == (200, {"status": "ready"}), header
    run = await child.request("POST", "/run", {"args": ["true"]})
    assert run.code == 401  # the rest of the instance still wants the token


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/livez", "/readyz"])
async def test_a_foreign_host_gets_421(instance, path):
    response = await instance.request("GET", path, headers={"Host": "rebound.example:8885"})
    assert response.code == 421
    assert json.loads(response.body)["error"] == "host_not_allowed"


def test_on_a_wildcard_bind_a_probe_to_the_machines_own_address_is_answered(spawn_instance):
    # What a kubelet sends: Host is the pod's address and port, and no token.
    child = spawn_instance("--address", "0.0.0.0", "--insecure-http",
                           env={"TASKRUNNER_TOKEN": TOKEN})
    for path in ("/livez", "/readyz"):
        for host, status in ((f"127.0.0.3:{child.port}", 200), ("evil.example", 421)):
            conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=10)
            try:
                response, _ = get(conn, path, {"Host": host})
            finally:
                conn.close()
            assert response.status == status, (path, host)


def test_readiness_is_starting_until_marked_ready_and_draining_keeps_its_first_reason(
        instance):
    # Startup marks the instance ready as its last step; before, it is starting.
    assert instance.ctx.not_ready() is None
    ctx = InstanceContext(config=Config(), engine=instance.ctx.engine,
                          launcher=instance.ctx.launcher, jobs=instance.ctx.jobs,
                          metrics=instance.ctx.metrics)
    assert ctx.not_ready() == "starting"
    ctx.ready = True
    assert ctx.not_ready() is None
    ctx.begin_draining("recycling")
    ctx.begin_draining("shutting down")  # a recycle ends in a shutdown
    assert ctx.not_ready() == "draining: recycling"
    assert ctx.draining

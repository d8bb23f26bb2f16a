"""Any instance answers for any job: real child instances on loopback sharing a job index
(SQLite, and PostgreSQL for the first test), no nginx in front.

A running job of instance a, asked of instance b: b forwards the live output (as it is
made, not at the end) and the cancel to a with the caller's token, and reads the final
state from the index; a caller who does not own the job gets 404 from b as from a. b
answers 503 owner_unreachable only when a cannot be asked: dead, silent past
--forward-timeout, or the request was forwarded already (a loop). Between HTTPS instances
the forward checks a's certificate against --peer-ca-file. An owner bound to 0.0.0.0
advertises a place to dial; a caller who leaves closes the forward; a stream whose owner
dies midway is cut, not ended as if whole.
"""

import asyncio
import json
import signal
import socket
import sqlite3
import subprocess
import time
from urllib.parse import urlsplit

import pytest
from conftest import Certificate, checked_fetch
from helpers import PY, REPO, get_job, token_sha256, until, wait_for
from tornado.httpclient import AsyncHTTPClient
from tornado.simple_httpclient import HTTPStreamClosedError

from taskrunner.web.edge import is_own_address
from taskrunner.web.peers import default_name

TOKEN = "forward-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def callers_file(path, tokens):
    """A callers file of one realm whose callers (name: token) have run and jobs."""
    text = 'realm = "site"\n'
    for name, token in tokens.items():
        text += (f'\n[callers.{name}]\ntoken_sha256 = "{token_sha256(token)}"'
                 '\nscopes = ["run", "jobs"]\nallow = "instance"\nmax_running = "instance"\n'
                 'limits = "instance"\n')
    path.write_text(text)
    return str(path)


async def call(instance, token, method, path):
    response = await instance.request(method, path, headers={"Authorization": f"Bearer {token}"})
    return response.code, json.loads(response.body)


def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return str(path)


def pair(spawn_instance, index, *extra):
    a = spawn_instance("--instance", "a", *index, *extra)
    b = spawn_instance("--instance", "b", *index, *extra)
    return a, b


async def start_job(instance, args, headers=AUTH):
    response = await instance.request("POST", "/jobs", {"args": args}, headers=headers)
    assert response.code == 202, response.body
    return json.loads(response.body)["id"]


async def seen_running(instance, job_id, headers=AUTH):
    async def running():
        response = await instance.request("GET", f"/jobs/{job_id}", headers=headers)
        return response.code == 200 and json.loads(response.body)["state"] == "running"

    await until(running, 10)


@pytest.mark.gen_test(timeout=60)
async def test_a_job_of_a_is_followed_live_cancelled_and_read_from_b(
        spawn_instance, shared_index, tmp_path):
    a, b = pair(spawn_instance, shared_index, "--token-file", token_file(tmp_path))
    gate = tmp_path / "gate"
    job_id = await start_job(a, ["sh", "-c", f"echo one; {wait_for(gate)}; echo two; "
                                 "exec sleep 600"])
    await seen_running(b, job_id)
    received = bytearray()
    arrived = {}

    def chunk(data):
        received.extend(data)
        for word in (b"one", b"two"):
            if word in received and word not in arrived:
                arrived[word] = time.monotonic()

    client = AsyncHTTPClient(force_instance=True)
    try:
        following = asyncio.ensure_future(checked_fetch(
            client, b.url, "GET", f"/jobs/{job_id}/output", headers=AUTH,
            streaming_callback=chunk, timeout=30))
        await until(lambda: b"one" in arrived or following.done(), 10)
        assert b"two" not in received and not following.done()  # live: the job waits
        gate.touch()
        await until(lambda: b"two" in arrived, 10)
        assert not following.done()  # the job still runs (sleep 600)
        status, cancelled = await call(b, TOKEN, "DELETE", f"/jobs/{job_id}")
        assert (status, cancelled["state"], cancelled["instance"]) == (200, "cancelled", "a")
        response = await asyncio.wait_for(following, 10)
    finally:
        client.close()
    assert response.code == 200
    lines = [json.loads(line) for line in received.splitlines()]
    assert "".join(line.get("data", "") for line in lines[:-1]) == "one\ntwo\n"
    assert lines[-1]["state"] == "cancelled"

    async def final_on_b():
        return (await get_job_as(b, job_id))["state"] == "cancelled"

    await until(final_on_b, 10)
    for instance in (a, b):
        assert "Taskrunner-Forwarded" not in instance.output()  # nothing logged as a fault
    if shared_index[0] == "--state-dir":
        with sqlite3.connect(f"{shared_index[1]}/jobs.sqlite3") as db:
            urls = dict(db.execute("SELECT name, url FROM instances"))
        assert urls == {"a": a.url, "b": b.url}


async def get_job_as(instance, job_id):
    response = await instance.request("GET", f"/jobs/{job_id}", headers=AUTH)
    assert response.code == 200, response.body
    return json.loads(response.body)


@pytest.mark.gen_test(timeout=60)
async def test_the_callers_token_goes_with_the_forward_and_a_stranger_gets_404_on_both(
        spawn_instance, tmp_path):
    tokens = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"}
    callers = callers_file(tmp_path / "callers.toml", tokens)
    a, b = pair(spawn_instance, ["--state-dir", str(tmp_path / "state")], "--callers", callers)
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    job_id = await start_job(a, ["sleep", "600"], alice)
    await seen_running(b, job_id, alice)
    for instance in (a, b):
        status, body = await call(instance, tokens["bob"], "DELETE", f"/jobs/{job_id}")
        assert (status, body["error"]) == (404, "job_not_found"), body
        status, body = await call(instance, tokens["bob"], "GET", f"/jobs/{job_id}/output")
        assert (status, body["error"]) == (404, "job_not_found"), body
    status, body = await call(b, tokens["alice"], "DELETE", f"/jobs/{job_id}")
    assert (status, body["state"], body["caller"]) == (200, "cancelled", "alice"), body


@pytest.mark.gen_test(timeout=60)
async def test_b_answers_owner_unreachable_for_a_loop_a_silent_owner_and_a_dead_one(
        spawn_instance, tmp_path):
    a, b = pair(spawn_instance, ["--state-dir", str(tmp_path / "state")],
                "--forward-timeout", "1")
    job_id = await start_job(a, ["sleep", "600"], {})
    await seen_running(b, job_id, {})
    # A forged forward is never forwarded again; the owner itself still answers it.
    forged = {"Taskrunner-Forwarded": "b"}
    response = await b.request("GET", f"/jobs/{job_id}/output", headers=forged)
    body = json.loads(response.body)
    assert (response.code, body["error"]) == (503, "owner_unreachable"), body
    assert "forwarded here already" in body["message"]
    assert response.headers["Retry-After"] == "5"
    assert (await a.request("GET", f"/jobs/{job_id}", headers=forged)).code == 200
    # a stopped (SIGSTOP): the kernel accepts b's connection, nobody answers it.
    a.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = await b.request("DELETE", f"/jobs/{job_id}")
        waited = time.monotonic() - started
    finally:
        a.signal(signal.SIGCONT)
    body = json.loads(response.body)
    assert (response.code, body["error"]) == (503, "owner_unreachable"), body
    assert "did not answer within 1s" in body["message"]
    assert 0.9 <= waited < 4, waited
    assert (await get_job(b, job_id))["state"] == "running"  # nothing was cancelled
    # a dies (no drain): refused at once, until its job turns lost.
    a.signal(signal.SIGKILL)
    a.wait()
    started = time.monotonic()
    response = await b.request("GET", f"/jobs/{job_id}/output")
    body = json.loads(response.body)
    assert (response.code, body["error"]) == (503, "owner_unreachable"), body
    assert "did not connect" in body["message"] and time.monotonic() - started < 1


@pytest.mark.gen_test(timeout=60)
async def test_https_siblings_forward_only_to_a_certificate_their_ca_file_trusts(
        spawn_instance, tmp_path):
    cert = Certificate(str(tmp_path))
    tls = ["--certfile", cert.cert, "--keyfile", cert.key]
    state = ["--state-dir", str(tmp_path / "state")]
    a = spawn_instance("--instance", "a", *state, *tls)
    trusting = spawn_instance("--instance", "b", *state, *tls, "--peer-ca-file", cert.cert)
    stranger = spawn_instance("--instance", "c", *state, *tls)  # the system's CAs only
    client = AsyncHTTPClient(force_instance=True)

    async def ask(instance, method, path, body=None):
        response = await checked_fetch(
            client, f"https://127.0.0.1:{instance.port}", method, path, body,
            ssl_options=cert.client_context())
        return response.code, json.loads(response.body)

    try:
        status, job = await ask(a, "POST", "/jobs", {"args": ["sleep", "600"]})
        assert status == 202, job

        async def running_on_c():
            return (await ask(stranger, "GET", f"/jobs/{job['id']}"))[1].get("state") == \
                "running"

        await until(running_on_c, 10)
        status, body = await ask(stranger, "DELETE", f"/jobs/{job['id']}")
        assert (status, body["error"]) == (503, "owner_unreachable"), body
        assert "CERTIFICATE_VERIFY_FAILED" in body["message"]
        status, body = await ask(trusting, "DELETE", f"/jobs/{job['id']}")
        assert (status, body["state"]) == (200, "cancelled"), body
    finally:
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_an_owner_on_a_wildcard_address_advertises_where_it_can_be_reached(
        spawn_instance, tmp_path):
    # A pod listens on 0.0.0.0: what it advertises must be a place to dial, never 0.0.0.0.
    state = str(tmp_path / "state")
    env = {"TASKRUNNER_TOKEN": TOKEN}
    a = spawn_instance("--state-dir", state, "--address", "0.0.0.0", "--insecure-http",
                       env=env)
    b = spawn_instance("--state-dir", state, env=env)
    job_id = await start_job(a, ["sleep", "600"])
    assert job_id.startswith(f"{default_name(a.port)}.")  # a name of its own: host-port
    await seen_running(b, job_id)
    status, body = await call(b, TOKEN, "DELETE", f"/jobs/{job_id}")
    assert (status, body["state"]) == (200, "cancelled"), body
    with sqlite3.connect(f"{state}/jobs.sqlite3") as db:
        (url,), = db.execute("SELECT url FROM instances WHERE name = ?",
                             (default_name(a.port),))
    host = urlsplit(url).hostname
    assert url.endswith(f":{a.port}") and host not in ("0.0.0.0", "::")
    assert host == socket.gethostname() or is_own_address(host), url


def connections_to(port):
    """Established TCP connections to ``port`` on this machine (``ss``, iproute2)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


@pytest.mark.gen_test(timeout=60)
async def test_a_caller_who_leaves_a_forwarded_stream_closes_the_forward_not_the_job(
        spawn_instance, tmp_path):
    a, b = pair(spawn_instance, ["--state-dir", str(tmp_path / "state")])
    job_id = await start_job(a, ["sh", "-c", "echo one; exec sleep 600"], {})
    await seen_running(b, job_id, {})
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    try:
        writer.write(f"GET /jobs/{job_id}/output HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        seen = b""
        while b"one" not in seen:
            seen += await asyncio.wait_for(reader.read(4096), 10)
        assert seen.startswith(b"HTTP/1.1 200 ")
        assert connections_to(a.port) == 1  # b's forward
    finally:
        writer.close()
    await until(lambda: connections_to(a.port) == 0, 10)
    assert (await get_job(b, job_id))["state"] == "running"


@pytest.mark.gen_test(timeout=60)
async def test_a_stream_whose_owner_dies_midway_is_cut_short_not_ended_cleanly(
        spawn_instance, tmp_path):
    a, b = pair(spawn_instance, ["--state-dir", str(tmp_path / "state")])
    job_id = await start_job(a, ["sh", "-c", "echo one; exec sleep 600"], {})
    await seen_running(b, job_id, {})
    received = bytearray()
    client = AsyncHTTPClient(force_instance=True)
    try:
        following = asyncio.ensure_future(client.fetch(
            f"{b.url}/jobs/{job_id}/output", headers={"Host": "localhost"}, raise_error=False,
            streaming_callback=received.extend, request_timeout=30))
        await until(lambda: b"one" in received, 10)
        a.signal(signal.SIGKILL)
        # The chunked body never gets its last chunk: the client knows it was cut.
        with pytest.raises(HTTPStreamClosedError):
            await asyncio.wait_for(following, 10)
    finally:
        client.close()
    assert all("state" not in json.loads(line) for line in received.splitlines())


@pytest.mark.parametrize("content", [None, "not a certificate\n"], ids=["missing", "not-pem"])
def test_a_peer_ca_file_that_cannot_be_used_stops_the_start_in_one_line(tmp_path, content):
    # Read at start: a forward must never be the first to find it unusable (a 500 then).
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    done = subprocess.run([PY, "-m", "taskrunner", "--port", "0", "--peer-ca-file", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert f"--peer-ca-file '{path}': cannot use it as CA certificates" in lines[0]

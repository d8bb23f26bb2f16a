"""Completion callbacks against a real receiver: an HTTP server on 127.0.0.1 in a thread of
its own, which records every POST and answers as the test scripts it (or holds it open)."""

import contextlib
import hashlib
import hmac
import http.server
import itertools
import json
import os
import re
import signal
import socket
import sqlite3
import threading
import time

import pytest
from conftest import Instance, with_config
from helpers import REPO, get_job, submit, until, wait_done
from openapi_check import checker

from taskrunner.config import Config
from taskrunner.errors import StartupError
from taskrunner.server import Server

SECRET = b"s3cret-for-the-tests"
FAST = (0.05, 0.05, 0.05, 0.05, 0.05)  # the backoff, shortened for tests that retry


class Receiver:
    """Records each POST as ``(path, headers, body)``; answers the statuses scripted for its
    path first (then 200); holds a request to a path in ``hang`` until `close`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.script: dict[str, list[int]] = {}
        self.hang: set[str] = set()
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((self.path, dict(self.headers), body))
                if self.path in receiver.hang:
                    receiver.release.wait(60)
                statuses = receiver.script.get(self.path)
                status = statuses.pop(0) if statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.netloc = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://{self.netloc}{path}"

    def received(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(headers, body) for p, headers, body in self.requests if p == path]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "callback-secret"
    path.write_bytes(SECRET + b"\n")  # surrounding whitespace is not part of the secret
    return str(path)


@pytest.fixture
def config(receiver, secret_file):
    return Config(port=0, grace=2.0, callback_allow=(receiver.netloc,),
                  callback_secret_file=secret_file)


def documented_check():
    """``verify_signature(secret, header, body)`` as docs/api.md gives it to receivers, run
    as written there."""
    with open(os.path.join(REPO, "docs", "api.md")) as f:
        section = f.read().split("#### Checking a callback", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "docs/api.md: no Python example under 'Checking a callback'"
    namespace = {}
    exec(code.group(1), namespace)  # the documentation's own example, as written
    return namespace["verify_signature"]


def verify(headers, body):
    return documented_check()(SECRET, headers["X-Taskrunner-Signature"], body)


def sign(secret, t, body):
    """A signature as the documentation defines it, made by the test."""
    return f"t={t},v1=" + hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()


async def wait_callback(instance, job_id, status="delivered", timeout=20.0):
    """Poll GET /jobs/<id> until its callback has ``status``; return the job."""
    found = {}

    async def reached():
        found["job"] = await get_job(instance, job_id)
        return found["job"]["callback"]["status"] == status

    await until(reached, timeout)
    return found["job"]


@pytest.mark.gen_test(timeout=30)
async def test_the_final_job_is_posted_once_and_signed(instance, receiver):
    url = receiver.url("/done?key=abc")
    job = await submit(instance, {"args": ["sh", "-c", "echo out; echo err >&2; exit 3"],
                                  "callback_url": url})
    assert job["callback_url"] == url
    assert job["callback"] == {"status": "pending", "attempts": 0, "error": None}
    final = await wait_callback(instance, job["id"])
    assert final["callback"] == {"status": "delivered", "attempts": 1, "error": None}
    [(headers, body)] = receiver.received("/done?key=abc")
    assert verify(headers, body)
    assert not documented_check()(b"another secret", headers["X-Taskrunner-Signature"], body)
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Taskrunner-Job"] == job["id"] and headers["X-Taskrunner-Attempt"] == "1"
    sent = json.loads(body)
    checker().validate(sent, {"$ref": "#/components/schemas/Job"}, "the callback's body")
    # The job as it ended: what GET shows, but for the callback, then still to be sent.
    assert sent == {**final, "callback": {"status": "pending", "attempts": 0, "error": None}}
    assert (sent["state"], sent["status"], sent["stdout"], sent["stderr"]) == \
        ("exited", 3, "out\n", "err\n")
    assert sent["usage"]["max_rss"] > 0 and sent["usage"]["queued"] == 0.0  # what it cost
    metrics = (await instance.request("GET", "/metrics")).body.decode()
    assert 'taskrunner_callbacks_total{outcome="delivered"} 1.0' in metrics
    assert 'taskrunner_callbacks_total{outcome="failed"} 0.0' in metrics


@pytest.mark.gen_test(timeout=30)
async def test_a_callback_carries_the_jobs_trace_context(instance, receiver):
    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = await instance.request(
        "POST", "/jobs", {"args": ["sh", "-c", "echo $TRACEPARENT"],
                          "callback_url": receiver.url("/traced")},
        headers={"traceparent": f"00-{trace}-{parent}-01", "tracestate": "vendor=abc"})
    assert response.code == 202
    job = json.loads(response.body)
    final = await wait_callback(instance, job["id"])
    [(sent, _)] = receiver.received("/traced")
    headers = {name.lower(): value for name, value in sent.items()}
    # The trace of the request that submitted the job, the span its command ran under.
    assert headers["traceparent"] == final["stdout"].strip()
    assert headers["traceparent"].startswith(f"00-{trace}-")
    assert headers["tracestate"] == "vendor=abc"


@pytest.mark.gen_test(timeout=30)
async def test_a_callback_captured_and_replayed_later_fails_the_documented_check(
        instance, receiver):
    job = await submit(instance, {"args": ["true"], "callback_url": receiver.url("/t")})
    await wait_callback(instance, job["id"])
    [(headers, body)] = receiver.received("/t")
    check = documented_check()
    header = headers["X-Taskrunner-Signature"]
    assert check(SECRET, header, body)
    sent = int(re.fullmatch(r"t=(\d+),v1=[0-9a-f]{64}", header).group(1))
    assert abs(time.time() - sent) < 5  # the time it was sent
    assert header == sign(SECRET, sent, body)
    # The same body as signed 290 s and 301 s ago, as an eavesdropper would have kept it:
    assert check(SECRET, sign(SECRET, sent - 290, body), body)
    assert not check(SECRET, sign(SECRET, sent - 301, body), body)
    # An old capture with its t moved to now, a changed body, a missing or bad t: refused.
    old = sign(SECRET, sent - 3600, body)
    assert not check(SECRET, old.replace(f"t={sent - 3600}", f"t={sent}"), body)
    assert not check(SECRET, header, body.replace(b'"exited"', b'"failed"'))
    assert not check(SECRET, header.split(",", 1)[1], body)
    assert not check(SECRET, header.replace(f"t={sent}", f"t={sent}0"), body)
    assert not check(SECRET, "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest(),
                     body)


@pytest.mark.gen_test(timeout=30)
async def test_each_try_is_signed_at_its_own_time(instance, receiver):
    instance.ctx.jobs.callbacks.backoff = (1.1,)  # t counts whole seconds
    receiver.script["/again"] = [500]
    job = await submit(instance, {"args": ["true"], "callback_url": receiver.url("/again")})
    await wait_callback(instance, job["id"])
    (first, body), (second, again) = receiver.received("/again")
    assert body == again  # the same bytes, signed anew
    times = [int(h["X-Taskrunner-Signature"].split(",")[0][2:]) for h in (first, second)]
    assert times[1] > times[0], times
    assert verify(first, body) and verify(second, body)


@pytest.mark.gen_test(timeout=30)
async def test_every_final_state_is_called_back(instance, receiver):
    cancelled = await submit(instance, {"args": ["sleep", "60"],
                                        "callback_url": receiver.url("/cancelled")})
    timed_out = await submit(instance, {"args": ["sleep", "60"], "timeout": 0.2,
                                        "callback_url": receiver.url("/timed_out")})
    await instance.request("DELETE", f"/jobs/{cancelled['id']}")
    for job, state in ((cancelled, "cancelled"), (timed_out, "timed_out")):
        await wait_callback(instance, job["id"])
        [(headers, body)] = receiver.received(f"/{state}")
        assert verify(headers, body) and json.loads(body)["state"] == state


@pytest.mark.gen_test(timeout=30)
async def test_a_receiver_answering_500_twice_gets_it_on_the_third_try(instance, receiver):
    instance.ctx.jobs.callbacks.backoff = FAST
    receiver.script["/flaky"] = [500, 500]
    job = await submit(instance, {"args": ["true"], "callback_url": receiver.url("/flaky")})
    final = await wait_callback(instance, job["id"])
    assert final["callback"] == {"status": "delivered", "attempts": 3, "error": None}
    tries = receiver.received("/flaky")
    assert [headers["X-Taskrunner-Attempt"] for headers, _ in tries] == ["1", "2", "3"]
    assert len({body for _, body in tries}) == 1  # the same bytes every time
    assert all(verify(headers, body) for headers, body in tries)


@pytest.mark.gen_test(timeout=40)
async def test_the_default_schedule_retries_after_2_then_4_seconds(instance, receiver):
    # The schedule as shipped (the other tests shorten it): a receiver down for its first
    # two tries gets the callback on the third, about 2 + 4 s after the first.
    receiver.script["/down"] = [503, 503]
    arrived: list[float] = []
    job = await submit(instance, {"args": ["true"], "callback_url": receiver.url("/down")})

    async def tried_three_times():
        while len(arrived) < len(receiver.received("/down")):
            arrived.append(time.monotonic())
        return len(arrived) == 3

    await until(tried_three_times, 20)
    final = await wait_callback(instance, job["id"])
    assert final["callback"] == {"status": "delivered", "attempts": 3, "error": None}
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrived)]
    assert 1.5 < gaps[0] < 3.5 and 3.5 < gaps[1] < 6, gaps


@pytest.mark.gen_test(timeout=30)
async def test_a_receiver_that_never_answers_2xx_ends_failed_after_every_try(
        instance, receiver):
    callbacks = instance.ctx.jobs.callbacks
    callbacks.backoff = FAST
    receiver.script["/gone"] = [404] * 10
    job = await submit(instance, {"args": ["true"], "callback_url": receiver.url("/gone")})
    final = await wait_callback(instance, job["id"], "failed")
    assert final["callback"] == {"status": "failed", "attempts": len(FAST) + 1,
                                 "error": "HTTP 404"}
    assert len(receiver.received("/gone")) == len(FAST) + 1
    metrics = (await instance.request("GET", "/metrics")).body.decode()
    assert 'taskrunner_callbacks_total{outcome="failed"} 1.0' in metrics


@pytest.mark.gen_test(timeout=30)
async def test_a_closed_port_on_the_list_is_retried_then_failed(receiver, secret_file,
                                                                 io_loop):
    with socket.socket() as probe:  # a port nobody listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    server = Server(Config(port=0, callback_allow=(closed,), callback_secret_file=secret_file),
                    handle_signals=False)
    await server.startup()
    try:
        server.ctx.jobs.callbacks.backoff = FAST[:2]
        inst = Instance(server)
        job = await submit(inst, {"args": ["true"], "callback_url": f"http://{closed}/x"})
        final = await wait_callback(inst, job["id"], "failed")
        assert final["callback"]["attempts"] == 3
        assert "refused" in final["callback"]["error"].lower()
        inst.client.close()
    finally:
        await server.shutdown()


@pytest.mark.gen_test(timeout=30)
async def test_a_host_off_the_list_is_refused_at_submission(instance, receiver):
    port = receiver.netloc.rsplit(":", 1)[1]
    off_the_list = [
        f"http://127.0.0.2:{port}/x",   # another address
        f"http://localhost:{port}/x",   # a name is matched as written, not resolved
        "http://127.0.0.1/x",           # the list names a port: no other one
        f"https://127.0.0.1:{int(port) + 1}/x",
        "http://169.254.169.254/latest/meta-data/",
    ]
    for url in off_the_list:
        response = await instance.request("POST", "/jobs", {"args": ["true"],
                                                             "callback_url": url})
        assert response.code == 403, (url, response.body)
        error = json.loads(response.body)
        assert error["error"] == "callback_not_allowed"
        assert "--callback-allow" in error["message"] and "/x" not in error["message"]
    assert json.loads((await instance.request("GET", "/jobs")).body)["jobs"] == []
    assert receiver.requests == []


@pytest.mark.gen_test(timeout=30)
async def test_a_callback_url_that_is_not_an_http_url_is_a_400(instance, receiver):
    bad = ["ftp://" + receiver.netloc + "/", "not a url", "/relative", "http://:80/",
           f"http://user:pw@{receiver.netloc}/", "http://127.0.0.1:99999/", "", 42, [],
           "http://127.0.0.1/\u00e9", "http://127.0.0.1/a b", "http://127.0.0.1/\x00",
           "http://127.0.0.1/" + "a" * 2048, "javascript:alert(1)"]
    for value in bad:
        response = await instance.request("POST", "/jobs", {"args": ["true"],
                                                             "callback_url": value})
        assert response.code == 400, (value, response.body)
        assert json.loads(response.body)["error"] == "invalid_field"
    # null is no callback; /run has no callbacks at all.
    job = await submit(instance, {"args": ["true"], "callback_url": None})
    assert job["callback_url"] is None and job["callback"] is None
    code, body = await instance.run({"args": ["true"], "callback_url": receiver.url("/")})
    assert code == 400 and body["error"] == "unknown_field"
    assert receiver.requests == []


@with_config()
@pytest.mark.gen_test(timeout=30)
async def test_without_callback_allow_no_callback_is_taken(instance):
    response = await instance.request("POST", "/jobs", {"args": ["true"],
                                                         "callback_url": "http://127.0.0.1:9/"})
    assert response.code == 403
    assert json.loads(response.body) == {
        "error": "callback_not_allowed",
        "message": "this instance sends no callbacks (no --callback-allow)"}


def test_callbacks_need_a_secret_and_a_secret_needs_callbacks(tmp_path, io_loop):
    with pytest.raises(ValueError, match="callback_secret_file"):
        Config(callback_allow=("hooks.example.com",))
    with pytest.raises(ValueError, match="no effect"):
        Config(callback_secret_file="/x")
    for entry in ("http://hooks.example.com", "hooks.example.com/path", "u@h", "h:99999"):
        with pytest.raises(ValueError, match="HOST or HOST:PORT"):
            Config(callback_allow=(entry,), callback_secret_file="/x")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, message in ((str(empty), "is empty"), (str(tmp_path / "none"), "cannot read")):
        server = Server(Config(port=0, callback_allow=("h",), callback_secret_file=path),
                        handle_signals=False)
        with pytest.raises(StartupError, match=message):
            io_loop.run_sync(server.startup)


@pytest.mark.gen_test(timeout=40)
async def test_a_hanging_receiver_holds_up_no_other_job_nor_callback(instance, receiver):
    instance.ctx.jobs.callbacks.try_timeout = 120.0  # the stuck try stays open, however slow
    receiver.hang.add("/hang")
    stuck = await submit(instance, {"args": ["true"], "callback_url": receiver.url("/hang")})
    await until(lambda: receiver.received("/hang"))  # its first try is open, unanswered
    others = [await submit(instance, {"args": ["sh", "-c", f"echo {i}"],
                                      "callback_url": receiver.url(f"/ok{i}")})
              for i in range(5)]
    for i, job in enumerate(others):
        done = await wait_done(instance, job["id"])
        assert done["stdout"] == f"{i}\n"
        await wait_callback(instance, job["id"])
        assert len(receiver.received(f"/ok{i}")) == 1
    code, result = await instance.run({"args": ["echo", "run"]})
    assert code == 200 and result["stdout"] == "run\n"
    job = await get_job(instance, stuck["id"])
    assert job["state"] == "exited"  # its result was there all along
    assert job["callback"] == {"status": "pending", "attempts": 1, "error": None}


@pytest.mark.gen_test(timeout=40)
async def test_a_hanging_receiver_holds_its_delivery_only_up_to_the_try_timeout(
        instance, receiver):
    callbacks = instance.ctx.jobs.callbacks
    callbacks.backoff, callbacks.try_timeout = FAST[:1], 0.5
    receiver.hang.add("/hang")
    job = await submit(instance, {"args": ["true"], "callback_url": receiver.url("/hang")})
    final = await wait_callback(instance, job["id"], "failed")
    assert final["callback"]["attempts"] == 2
    assert "timeout" in final["callback"]["error"].lower()
    assert len(receiver.received("/hang")) == 2


# -- across restarts (--state-dir), with real child instances ----------------------------


def start(spawn_instance, state_dir, secret_file, *allowed, grace="0.5"):
    args = ["--state-dir", state_dir, "--instance", "cb", "--grace", grace]
    for host in allowed:
        args += ["--callback-allow", host]
    if allowed:
        args += ["--callback-secret-file", secret_file]
    return spawn_instance(*args)


async def child_callback(child, job_id, status, timeout=20.0):
    found = {}

    async def reached():
        response = await child.request("GET", f"/jobs/{job_id}")
        found["job"] = json.loads(response.body)
        return found["job"]["callback"]["status"] == status

    await until(reached, timeout)
    return found["job"]


@pytest.mark.gen_test(timeout=90)
async def test_the_outcome_survives_a_restart_and_a_stop_fails_what_is_pending(
        spawn_instance, tmp_path, receiver, secret_file):
    state_dir = str(tmp_path / "state")
    receiver.hang.add("/hang")
    child = start(spawn_instance, state_dir, secret_file, receiver.netloc)
    delivered = json.loads((await child.request("POST", "/jobs", {
        "args": ["echo", "hi"], "callback_url": receiver.url("/ok")})).body)
    await child_callback(child, delivered["id"], "delivered")
    pending = json.loads((await child.request("POST", "/jobs", {
        "args": ["true"], "callback_url": receiver.url("/hang")})).body)
    await until(lambda: receiver.received("/hang"))
    child.signal(signal.SIGTERM)  # its try is cut short after the callbacks' grace
    assert child.wait() == 0
    assert "callback" in child.output() and "stopped before the callback" in child.output()

    again = start(spawn_instance, state_dir, secret_file, receiver.netloc)
    job = json.loads((await again.request("GET", f"/jobs/{delivered['id']}")).body)
    assert job["callback"] == {"status": "delivered", "attempts": 1, "error": None}
    job = json.loads((await again.request("GET", f"/jobs/{pending['id']}")).body)
    assert job["callback"] == {
        "status": "failed", "attempts": 1,
        "error": "the instance stopped before the callback was delivered"}
    assert len(receiver.received("/ok")) == 1  # nothing is sent again
    assert len(receiver.received("/hang")) == 1


@pytest.mark.gen_test(timeout=90)
async def test_a_job_lost_in_a_crash_is_called_back_at_the_next_start(
        spawn_instance, tmp_path, receiver, secret_file):
    state_dir = str(tmp_path / "state")
    child = start(spawn_instance, state_dir, secret_file, receiver.netloc)
    running = json.loads((await child.request("POST", "/jobs", {
        "args": ["sleep", "60"], "callback_url": receiver.url("/lost")})).body)
    await until(lambda: stored_state(state_dir, running["id"]) == "running")
    child.signal(signal.SIGKILL)
    child.wait()
    assert receiver.requests == []

    again = start(spawn_instance, state_dir, secret_file, receiver.netloc)
    job = await child_callback(again, running["id"], "delivered")
    assert job["state"] == "lost"
    [(headers, body)] = receiver.received("/lost")
    assert verify(headers, body) and json.loads(body)["state"] == "lost"


@pytest.mark.gen_test(timeout=90)
async def test_a_host_taken_off_the_list_before_the_job_ends_is_recorded_refused(
        spawn_instance, tmp_path, receiver, secret_file):
    state_dir = str(tmp_path / "state")
    child = start(spawn_instance, state_dir, secret_file, receiver.netloc)
    running = json.loads((await child.request("POST", "/jobs", {
        "args": ["sleep", "60"], "callback_url": receiver.url("/lost")})).body)
    await until(lambda: stored_state(state_dir, running["id"]) == "running")
    child.signal(signal.SIGKILL)
    child.wait()

    again = start(spawn_instance, state_dir, secret_file, "hooks.example.com")
    job = await child_callback(again, running["id"], "refused")
    assert job["state"] == "lost" and job["callback"]["attempts"] == 0
    assert "127.0.0.1" in job["callback"]["error"]
    assert receiver.requests == []


def stored_state(state_dir, job_id):
    path = os.path.join(state_dir, "jobs.sqlite3")
    if not os.path.exists(path):
        return None
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row and row[0]


_SCHEMA_V2 = """CREATE TABLE jobs (id TEXT PRIMARY KEY, instance TEXT NOT NULL,
    state TEXT NOT NULL, args TEXT NOT NULL, status INTEGER, timed_out INTEGER NOT NULL,
    duration REAL, stdout_truncated INTEGER NOT NULL, stderr_truncated INTEGER NOT NULL,
    created REAL NOT NULL, finished REAL, error TEXT)"""


def test_a_store_of_version_2_opens_with_its_jobs_and_keeps_callbacks_after(tmp_path):
    from helpers import sqlite_store

    from taskrunner.jobs.schema import JobRecord

    path = tmp_path / "jobs.sqlite3"
    now = time.time()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(_SCHEMA_V2)
        db.execute("PRAGMA user_version = 2")
        db.execute("INSERT INTO jobs VALUES ('v.AAAAAAAAAAAAAAAAAAAAAA', 'v', 'exited', "
                   "'[\"true\"]', 0, 0, 0.1, 0, 0, ?, ?, NULL)", (now, now))
    store = sqlite_store(str(tmp_path), "v")
    store.open()
    store.start()
    try:
        [old] = store.load()
        assert (old.state, old.callback_url, old.callback) == ("exited", None, None)
        outcome = {"status": "failed", "attempts": 6, "error": "HTTP 500"}
        store.put(old.id, JobRecord(**{**old.__dict__, "callback_url": "http://h/",
                                       "callback": outcome}))
        assert store.flush()
    finally:
        store.close()
    store = sqlite_store(str(tmp_path), "v")
    store.open()
    try:
        [record] = store.load()
        assert (record.callback_url, record.callback) == ("http://h/", outcome)
    finally:
        store.close()

"""The bearer token: every route but the probes (GET /healthz, /livez, /readyz) needs it;
protected mode; no leaks."""

import http.client
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from helpers import PY, REPO, wait_until

from taskrunner.config import Config

TOKEN = "s3cret-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def config(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    return Config(port=0, grace=2.0, token_file=str(token_file))


@pytest.mark.gen_test
@pytest.mark.parametrize("method,path", [
    ("POST", "/run"), ("GET", "/run"), ("GET", "/nowhere"), ("POST", "/healthz"),
    ("DELETE", "/jobs/x"), ("POST", "/jobs"), ("GET", "/jobs"), ("GET", "/jobs/x"),
    ("GET", "/jobs/x/output"), ("GET", "/metrics"), ("GET", "/openapi.json"),
    ("PUT", "/run"), ("FOO", "/run"), ("FOO", "/jobs"), ("FOO", "/healthz"),
    ("FOO", "/nowhere"),
])
async def test_every_route_but_get_healthz_requires_the_token(instance, method, path):
    response = await instance.request(method, path, {"args": ["true"]})
    assert response.code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["Content-Type"] == "application/json"
    assert "Allow" not in response.headers  # a stranger learns nothing of the routes
    body = json.loads(response.body)
    assert body["error"] == "unauthorized"
    assert TOKEN not in response.body.decode()


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/run", "/jobs", "/healthz"])
async def test_an_unknown_method_with_the_token_is_405_with_allow(instance, path):
    response = await instance.request("FOO", path, headers=AUTH)
    assert response.code == 405
    assert json.loads(response.body)["error"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"] or "POST" in response.headers["Allow"]


@pytest.mark.gen_test
async def test_healthz_is_public(instance):
    response = await instance.request("GET", "/healthz")
    assert response.code == 200


@pytest.mark.gen_test
@pytest.mark.parametrize("header", [
    "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer",
    "", f"Bearer  {TOKEN[::-1]}",
])
async def test_a_wrong_token_is_refused(instance, header):
    response = await instance.request("POST", "/run", {"args": ["true"]},
                                      headers={"Authorization": header})
    assert response.code == 401
    assert json.loads(response.body)["message"]
    assert TOKEN not in response.body.decode()


@pytest.mark.gen_test
async def test_the_right_token_runs_the_command(instance):
    code, body = await instance.run({"args": ["echo", "hi"]}, headers=AUTH)
    assert code == 200 and body["stdout"] == "hi\n"
    code, body = await instance.run({"args": ["echo", "hi"]},
                                    headers={"Authorization": f"bearer {TOKEN}"})
    assert code == 200  # the scheme is case-insensitive (RFC 7235)
    code, body = await instance.run({"args": ["echo", "hi"]},
                                    headers={"Authorization": f"Bearer   {TOKEN}"})
    assert code == 200  # and may be followed by more than one space (1*SP)


@pytest.mark.gen_test
async def test_unknown_routes_answer_401_not_404_without_the_token(instance):
    response = await instance.request("GET", "/admin")
    assert response.code == 401
    response = await instance.request("GET", "/admin", headers=AUTH)
    assert response.code == 404


def _get(url, headers=None, data=None):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_token_from_the_environment_never_reaches_a_child_or_the_log(spawn_instance):
    child = spawn_instance(env={"TASKRUNNER_TOKEN": TOKEN, "TASKRUNNER_OTHER": "x"})
    status, _ = _get(child.url + "/run", data=b'{"args": ["true"]}')
    assert status == 401
    status, body = _get(child.url + "/run", headers={"Authorization": "Bearer nope"},
                        data=b'{"args": ["true"]}')
    assert status == 401
    status, body = _get(child.url + "/run", headers=AUTH, data=b'{"args": ["env"]}')
    assert status == 200
    stdout = json.loads(body)["stdout"]
    assert "PATH=" in stdout
    assert "TASKRUNNER_" not in stdout
    assert TOKEN not in stdout
    assert wait_until(lambda: "POST /run 401" in child.output())  # lines come in batches
    assert TOKEN not in child.output()


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.0.2.1"])
def test_protected_mode_refuses_a_public_address_without_a_token(address):
    env = {k: v for k, v in os.environ.items() if k != "TASKRUNNER_TOKEN"}
    proc = subprocess.run([PY, "-m", "taskrunner", "--address", address, "--port", "0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "--token-file" in lines[0] and "TASKRUNNER_TOKEN" in lines[0]


def test_a_public_address_with_a_token_starts(spawn_instance):
    # Plain HTTP, so --insecure-http: tests/web/test_tls.py has protected mode's TLS half.
    child = spawn_instance("--address", "0.0.0.0", "--insecure-http",
                           env={"TASKRUNNER_TOKEN": TOKEN})
    assert _get(child.url + "/healthz")[0] == 200


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_token_file_is_refused(tmp_path, content):
    token_file = tmp_path / "token"
    token_file.write_text(content)
    proc = subprocess.run([PY, "-m", "taskrunner", "--port", "0", "--token-file",
                           str(token_file)], cwd=REPO, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode != 0
    assert "is empty" in proc.stderr


def test_a_missing_token_file_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "taskrunner", "--port", "0", "--token-file",
                           str(tmp_path / "absent")], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode != 0
    assert "cannot read --token-file" in proc.stderr


@pytest.mark.parametrize("address,loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("", False), ("::", False), ("10.0.0.1", False), ("example.org", False),
])
def test_which_addresses_count_as_loopback(address, loopback):
    from taskrunner.web.auth import is_loopback
    assert is_loopback(address) is loopback


def test_an_empty_token_variable_is_refused_even_on_loopback():
    env = {**os.environ, "TASKRUNNER_TOKEN": "  "}
    proc = subprocess.run([PY, "-m", "taskrunner", "--port", "0"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert proc.stderr.strip() == "taskrunner: TASKRUNNER_TOKEN is set but empty"


# A refused request leaves its connection usable: nginx keeps its upstream connections open
# and counts one closed under it (or reset, when body bytes were still coming) as a failure
# of the instance, which then gets no requests for a while. So the body is read, then 401.

def _send(conn, method, path, body, headers, split=0):
    """Send a request whose body goes out in two writes, the second ``split`` bytes long."""
    conn.putrequest(method, path, skip_accept_encoding=True)
    for name, value in {"Content-Length": str(len(body)), **headers}.items():
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(body[:len(body) - split])
    if split:
        conn.send(body[len(body) - split:])
    response = conn.getresponse()
    return response, response.read()


@pytest.mark.parametrize("method,path", [("POST", "/run"), ("POST", "/jobs"),
                                         ("FOO", "/run"), ("GET", "/jobs")])
def test_a_refused_request_with_a_body_leaves_the_connection_open(spawn_instance, method,
                                                                   path):
    child = spawn_instance(env={"TASKRUNNER_TOKEN": TOKEN})
    body = json.dumps({"args": ["echo", "x" * 20000]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=10)
    try:
        for header in ({}, {"Authorization": "Bearer wrong"}):
            response, answer = _send(conn, method, path, body, header, split=10000)
            assert response.status == 401, answer
            assert json.loads(answer)["error"] == "unauthorized"
            assert response.getheader("Connection") is None
        sock = conn.sock
        response, answer = _send(conn, "POST", "/run", body, AUTH)
        assert conn.sock is sock, "the instance closed the connection after its 401"
        assert response.status == 200 and json.loads(answer)["stdout"] == "x" * 20000 + "\n"
    finally:
        conn.close()


def test_a_refused_body_over_the_limit_is_401_and_closes(spawn_instance):
    child = spawn_instance("--max-body", "1000", env={"TASKRUNNER_TOKEN": TOKEN})
    conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=10)
    try:
        # Declared too large: answered at once, without reading it, and said so.
        response, answer = _send(conn, "POST", "/run", b"x" * 1001, {})
        assert (response.status, json.loads(answer)["error"]) == (401, "unauthorized")
        assert response.getheader("Connection") == "close"
    finally:
        conn.close()
    status, body = _get(child.url + "/run", headers=AUTH, data=b"x" * 1001)
    assert (status, json.loads(body)["error"]) == (413, "body_too_large")


def test_errors_answered_before_the_body_is_read_say_connection_close(spawn_instance):
    # The instance closes the connection after these (it will not read what is left of
    # the body); a caller, or nginx, must not send its next request on it.
    child = spawn_instance("--max-body", "1000", "--body-timeout", "0.5",
                           env={"TASKRUNNER_TOKEN": TOKEN})
    conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=10)
    try:
        response, answer = _send(conn, "POST", "/run", b"x" * 1001, AUTH)
        assert (response.status, json.loads(answer)["error"]) == (413, "body_too_large")
        assert response.getheader("Connection") == "close"
    finally:
        conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", child.port, timeout=10)
    try:
        conn.putrequest("POST", "/run", skip_accept_encoding=True)
        for name, value in {"Content-Length": "100", **AUTH}.items():
            conn.putheader(name, value)
        conn.endheaders()
        conn.send(b"{")  # and nothing more: the body timeout answers
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())["error"]) == (408, "body_timeout")
        assert response.getheader("Connection") == "close"
    finally:
        conn.close()


@pytest.mark.parametrize("token,what", [
    ("abc\ndef", "a line break"), ("abc\r\ndef", "a line break"), ("abc def", "whitespace"),
    ("abc\tdef", "whitespace"), ("abc\x1bdef", "a control character"),
    ("abc\x7fdef", "a control character"), ("abc\u00e4def", "a non-ASCII character"),
])
@pytest.mark.parametrize("source", ["file", "env"])
def test_a_token_no_client_could_send_is_refused_at_startup(tmp_path, token, what, source):
    """It used to start, then answer 401 to every request: nobody can send such a header."""
    env = {k: v for k, v in os.environ.items() if k != "TASKRUNNER_TOKEN"}
    args = [PY, "-m", "taskrunner", "--port", "0"]
    if source == "file":
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n", encoding="utf-8")
        args += ["--token-file", str(token_file)]
    else:
        env["TASKRUNNER_TOKEN"] = token
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1  # as every other startup error: sys.exit(message)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert what in lines[0] and "character 4" in lines[0] and "listening" not in lines[0]
    assert "abc" not in lines[0] and "def" not in lines[0]  # the token is not shown


def test_a_token_file_with_a_trailing_newline_and_spaces_starts(spawn_instance, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\r\n\n")
    child = spawn_instance("--token-file", str(token_file))
    assert _get(child.url + "/run")[0] == 401
    request = urllib.request.Request(child.url + "/run", data=b'{"args": ["true"]}',
                                     headers=AUTH, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


JOBS_ROUTES = [("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/x"), ("DELETE", "/jobs/x"),
               ("GET", "/jobs/x/output")]


@pytest.mark.gen_test
@pytest.mark.parametrize("method,path", JOBS_ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong"], ids=["none", "wrong"])
async def test_every_jobs_route_requires_the_token(instance, method, path, authorization):
    # A real job, so that a route that forgot the token would have something to show or end.
    created = await instance.request("POST", "/jobs", {"args": ["sleep", "30"]}, headers=AUTH)
    assert created.code == 202, created.body
    job_id = json.loads(created.body)["id"]
    path = path.replace("/x", f"/{job_id}")
    headers = {"Authorization": authorization} if authorization else None
    body = {"args": ["true"]} if method == "POST" else None
    response = await instance.request(method, path, body, headers=headers, timeout=10)
    assert response.code == 401, response.body
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(response.body)["error"] == "unauthorized"
    # Nothing was started, listed or cancelled for the stranger.
    listed = json.loads((await instance.request("GET", "/jobs", headers=AUTH)).body)["jobs"]
    assert [(job["id"], job["state"]) for job in listed] == [(job_id, "running")]
    assert instance.ctx.engine.running == 1


@pytest.mark.gen_test
async def test_a_401_says_what_is_missing_or_wrong(instance):
    response = await instance.request("POST", "/run", {"args": ["true"]})
    assert json.loads(response.body)["message"].startswith(
        "this route requires an 'Authorization: Bearer <token>' header")
    response = await instance.request("POST", "/run", {"args": ["true"]},
                                      headers={"Authorization": "Bearer wrong"})
    assert json.loads(response.body)["message"].startswith("the bearer token is not valid")


def test_load_token_decides_who_may_call(tmp_path):
    from taskrunner.errors import StartupError
    from taskrunner.web.auth import load_token
    # On loopback no token is needed, and none is asked for.
    assert load_token(Config(address="127.0.0.1"), {}) is None
    assert load_token(Config(address="127.0.0.1"), {"TASKRUNNER_TOKEN": " t0k "}) == "t0k"
    # Beyond it, the refusal tells the operator the ways out.
    with pytest.raises(StartupError, match=r"--token-file PATH or TASKRUNNER_TOKEN, or "
                                           r"listen on 127\.0\.0\.1$"):
        load_token(Config(address="0.0.0.0"), {})
    # An unreadable file: the reason in words, as the operator would read it from ls.
    with pytest.raises(StartupError) as refused:
        load_token(Config(token_file=str(tmp_path / "absent")), {})
    assert str(refused.value) == (f"cannot read --token-file {str(tmp_path / 'absent')!r}: "
                                  "No such file or directory")


def test_a_token_file_that_is_not_utf8_is_a_one_line_refusal(tmp_path):
    from taskrunner.errors import StartupError
    from taskrunner.web.auth import load_token
    token_file = tmp_path / "token"
    token_file.write_bytes(b"s3cret\xff\n")
    with pytest.raises(StartupError, match=r"^cannot read --token-file .*: 'utf-8' codec"):
        load_token(Config(token_file=str(token_file)), {})

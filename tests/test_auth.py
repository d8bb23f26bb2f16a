"""The bearer token: every route but GET /healthz needs it; protected mode; no leaks."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from conftest import PY, REPO, wait_until

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
    ("DELETE", "/jobs/x"),
])
async def test_every_route_but_get_healthz_requires_the_token(instance, method, path):
    response = await instance.request(method, path, {"args": ["true"]})
    assert response.code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.body)
    assert body["error"] == "unauthorized"
    assert TOKEN not in response.body.decode()


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
    child = spawn_instance("--address", "0.0.0.0", env={"TASKRUNNER_TOKEN": TOKEN})
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
    from taskrunner.auth import is_loopback
    assert is_loopback(address) is loopback


def test_the_commands_environment_has_no_taskrunner_variables():
    from taskrunner.auth import scrub_env
    assert scrub_env({"PATH": "/bin", "TASKRUNNER_TOKEN": "x", "TASKRUNNER_X": "y",
                      "MY_TASKRUNNER_TOKEN": "z"}) == {"PATH": "/bin", "MY_TASKRUNNER_TOKEN": "z"}


def test_an_empty_token_variable_is_refused_even_on_loopback():
    env = {**os.environ, "TASKRUNNER_TOKEN": "  "}
    proc = subprocess.run([PY, "-m", "taskrunner", "--port", "0"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert proc.stderr.strip() == "taskrunner: TASKRUNNER_TOKEN is set but empty"


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
    from taskrunner.auth import StartupError, load_token
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
    from taskrunner.auth import StartupError, load_token
    token_file = tmp_path / "token"
    token_file.write_bytes(b"s3cret\xff\n")
    with pytest.raises(StartupError, match=r"^cannot read --token-file .*: 'utf-8' codec"):
        load_token(Config(token_file=str(token_file)), {})

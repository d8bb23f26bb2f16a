"""Actions over HTTP on a real instance with real commands: GET /actions, POST
/actions/<name> (like /run) and /actions/<name>/jobs (like /jobs), the callers' actions
scope and list, limits, --allow, reloads, the OpenAPI document and the metrics."""

import json
import os
import signal
import subprocess

import pytest
from actionsutil import GREET
from helpers import PY, REPO, token_sha256, until, wait_until

from taskrunner.config import Config

TOKENS = {"ops": "ops-token-0123456789", "dev": "dev-token-0123456789",
          "root": "root-token-0123456789"}


def auth(name):
    return {"Authorization": f"Bearer {TOKENS[name]}"}


ACTIONS = GREET + r'''

[actions.touch]
args = ["/usr/bin/touch", "{path}"]

[actions.touch.params.path]
type = "string"
pattern = "/tmp/[a-z0-9_./-]+"

[actions.wait]
description = "Sleep a while"
args = ["/bin/sleep", "{seconds}"]

[actions.wait.params.seconds]
type = "integer"
minimum = 0
maximum = 60

[actions.nofile]
args = ["/bin/sh", "-c", "ulimit -n"]
limit_nofile = 17

[actions.nofile_caller]
args = ["/bin/sh", "-c", "ulimit -n"]

[actions.hidden]
args = ["/bin/true"]

[actions.where]
args = ["/bin/sh", "-c", "pwd; echo $GREETING; cat"]
cwd = "/tmp"
env = { GREETING = "from the file" }
'''

CALLERS = f'''
realm = "test"

[callers.ops]
token_sha256 = "{token_sha256(TOKENS['ops'])}"
scopes = ["actions"]
allow = "instance"
max_running = "instance"
actions = ["greet", "touch", "wait", "nofile", "nofile_caller", "where"]

[callers.ops.limits]
user = "instance"
limit-as = "instance"
limit-cpu = "instance"
limit-nproc = "instance"
limit-fsize = "instance"
limit-nofile = 37

[callers.dev]
token_sha256 = "{token_sha256(TOKENS['dev'])}"
scopes = ["run", "jobs"]
allow = "instance"
max_running = "instance"
limits = "instance"

[callers.root]
token_sha256 = "{token_sha256(TOKENS['root'])}"
scopes = ["admin", "actions"]
allow = "instance"
max_running = "instance"
limits = "instance"
actions = "all"
'''


@pytest.fixture
def config(request, tmp_path):
    (tmp_path / "actions.toml").write_text(ACTIONS)
    (tmp_path / "callers.toml").write_text(CALLERS)
    # --allow names only `true`: actions' programs are the operator's and do not need it.
    index = str(tmp_path) if getattr(request, "param", "memory") == "sqlite" else ""
    return Config(port=0, grace=2.0, actions=str(tmp_path / "actions.toml"),
                  callers=str(tmp_path / "callers.toml"), allow=("true",), state_dir=index)


async def call(instance, name, method, path, body=None):
    response = await instance.request(method, path, body, headers=auth(name) if name else None)
    return response.code, json.loads(response.body) if response.body.startswith(b"{") else None


@pytest.mark.gen_test(timeout=30)
async def test_actions_run_like_run_with_their_params_checked(instance):
    code, body = await call(instance, "ops", "POST", "/actions/greet",
                            {"params": {"name": "Ada Lovelace"}})
    assert (code, body["status"], body["stdout"]) == (200, 0, "hello, Ada Lovelace!\n")
    # A value is one argument, never seen by a shell.
    code, body = await call(instance, "ops", "POST", "/actions/greet",
                            {"params": {"name": "Ada", "greeting": "$(id); `id` 'x'"}})
    assert (code, body["stdout"]) == (200, "$(id); `id` 'x', Ada!\n")
    # --allow (only `true` here) does not apply to an action; /run still obeys it for dev.
    code, body = await call(instance, "dev", "POST", "/run", {"args": ["printf", "x"]})
    assert (code, body["error"]) == (403, "program_not_allowed")


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(("body", "code", "error", "says"), [
    ({"params": {"path": "/etc/passwd"}}, 400, "invalid_param", "parameter path must match"),
    ({"params": {"path": "/tmp/x", "mode": "0777"}}, 400, "invalid_param",
     "unknown parameter 'mode'"),
    ({}, 400, "invalid_param", "parameter path is required"),
    ({"params": {"path": "/tmp/x"}, "args": ["/bin/rm"]}, 400, "unknown_field", "'args'"),
    ({"params": {"path": "/tmp/x"}, "cwd": "/"}, 400, "unknown_field", "'cwd'"),
    ({"params": {"path": "/tmp/x"}, "timeout": 99999}, 400, "invalid_field", "timeout"),
])
async def test_a_wrong_request_is_a_400_naming_the_param_and_nothing_starts(
        instance, tmp_path, body, code, error, says):
    started = instance.ctx.metrics.started._value.get()
    got, answer = await call(instance, "ops", "POST", "/actions/touch", body)
    assert (got, answer["error"]) == (code, error)
    assert says in answer["message"]
    assert instance.ctx.metrics.started._value.get() == started


@pytest.mark.gen_test(timeout=30)
async def test_an_unknown_action_and_one_not_the_callers_are_the_same_404(instance):
    for name in ("nosuch", "hidden"):
        code, body = await call(instance, "ops", "POST", f"/actions/{name}", {})
        assert (code, body["error"]) == (404, "action_not_found"), name
        code, body = await call(instance, "ops", "POST", f"/actions/{name}/jobs", {})
        assert (code, body["error"]) == (404, "action_not_found"), name
    code, body = await call(instance, "root", "POST", "/actions/hidden", {})
    assert (code, body["status"]) == (200, 0)


@pytest.mark.gen_test(timeout=30)
async def test_get_actions_lists_the_callers_actions_with_their_schemas(instance):
    code, body = await call(instance, "ops", "GET", "/actions")
    assert code == 200
    names = [a["name"] for a in body["actions"]]
    assert names == ["greet", "touch", "wait", "nofile", "nofile_caller", "where"]
    greet = body["actions"][0]
    assert greet["description"] == "Greet someone" and greet["timeout"] == 10
    assert greet["params"]["required"] == ["name"]
    assert greet["params"]["properties"]["greeting"] == {
        "type": "string", "maxLength": 20, "pattern": "^[^\\u0000]*$",
        "not": {"pattern": "^-"}, "default": "hello"}
    assert greet["params"]["additionalProperties"] is False
    code, body = await call(instance, "dev", "GET", "/actions")
    assert (code, body["error"]) == (403, "missing_scope")


@pytest.mark.gen_test(timeout=30)
async def test_an_actions_only_caller_follows_and_cancels_its_action_jobs_only(instance):
    code, job = await call(instance, "ops", "POST", "/actions/wait/jobs",
                           {"params": {"seconds": 30}})
    assert code == 202
    assert (job["action"], job["params"], job["args"]) == ("wait", {"seconds": 30},
                                                          ["/bin/sleep", "30"])
    path = f"/jobs/{job['id']}"
    code, body = await call(instance, "ops", "GET", path)
    assert (code, body["state"], body["action"]) == (200, "running", "wait")
    code, body = await call(instance, "dev", "GET", path)  # another caller's job
    assert (code, body["error"]) == (404, "job_not_found")
    code, body = await call(instance, "ops", "DELETE", path)
    assert (code, body["state"]) == (200, "cancelled")
    # The actions scope alone is no door to /run, POST /jobs or the listing.
    for method, route, request in (("POST", "/run", {"args": ["true"]}),
                                   ("POST", "/jobs", {"args": ["true"]}),
                                   ("GET", "/jobs", None)):
        code, body = await call(instance, "ops", method, route, request)
        assert (code, body["error"]) == (403, "missing_scope"), route
    # dev's plain job, found by the admin, is still nothing to ops
    code, plain = await call(instance, "dev", "POST", "/jobs", {"args": ["true"]})
    assert code == 202
    code, body = await call(instance, "ops", "GET", f"/jobs/{plain['id']}")
    assert code == 404


@pytest.mark.gen_test(timeout=30)
async def test_the_job_output_of_an_action_streams(instance):
    code, job = await call(instance, "ops", "POST", "/actions/greet/jobs",
                           {"params": {"name": "Grace"}})
    assert code == 202
    response = await instance.request("GET", f"/jobs/{job['id']}/output", headers=auth("ops"))
    lines = [json.loads(line) for line in response.body.splitlines()]
    assert {"stream": "stdout", "data": "hello, Grace!\n"} in lines
    assert lines[-1]["action"] == "greet" and lines[-1]["status"] == 0


@pytest.mark.gen_test(timeout=30)
async def test_an_actions_limits_win_over_its_callers(instance):
    code, body = await call(instance, "ops", "POST", "/actions/nofile", {})
    assert (code, body["stdout"]) == (200, "17\n")
    code, body = await call(instance, "ops", "POST", "/actions/nofile_caller", {})
    assert (code, body["stdout"]) == (200, "37\n")


@pytest.mark.gen_test(timeout=30)
async def test_an_action_runs_in_its_cwd_with_its_env_and_the_callers_stdin(instance):
    code, body = await call(instance, "ops", "POST", "/actions/where", {"stdin": "piped"})
    assert (code, body["stdout"]) == (200, "/tmp\nfrom the file\npiped")


@pytest.mark.gen_test(timeout=30)
async def test_an_actions_timeout_caps_the_callers(instance):
    code, body = await call(instance, "ops", "POST", "/actions/greet",
                            {"params": {"name": "Ada"}, "timeout": 11})
    assert (code, body["error"]) == (400, "invalid_field")
    assert "above the maximum of 10" in body["message"]


@pytest.mark.gen_test(timeout=30)
async def test_a_reload_keeps_the_old_set_on_a_bad_file_and_takes_a_good_one(instance, config):
    path = config.actions
    with open(path, "w") as f:
        f.write(ACTIONS.replace('max_length = 20\n', ''))  # greeting without a bound
    instance.server.reload()
    code, body = await call(instance, "ops", "POST", "/actions/greet", {"params": {"name": "A"}})
    assert (code, body["stdout"]) == (200, "hello, A!\n")
    with open(path, "w") as f:
        f.write('[actions.greet]\nargs = ["/bin/echo", "new"]\n')
    instance.server.reload()
    code, body = await call(instance, "ops", "POST", "/actions/greet", {})
    assert (code, body["stdout"]) == (200, "new\n")
    code, body = await call(instance, "ops", "POST", "/actions/touch", {})
    assert (code, body["error"]) == (404, "action_not_found")


@pytest.mark.gen_test(timeout=30)
async def test_openapi_has_an_operation_per_action_and_metrics_a_label(instance):
    code, doc = await call(instance, "ops", "GET", "/openapi.json")
    assert code == 200
    operation = doc["paths"]["/actions/greet"]["post"]
    assert operation["operationId"] == "runAction_greet"
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["params"]["required"] == ["name"]
    assert schema["properties"]["timeout"]["maximum"] == 10
    assert "/actions/wait/jobs" in doc["paths"]
    await call(instance, "ops", "POST", "/actions/greet", {"params": {"name": "Ada"}})
    response = await instance.request("GET", "/metrics", headers=auth("root"))
    assert 'taskrunner_action_commands_started_total{action="greet"} 1.0' in response.body.decode()


def test_a_bad_actions_file_at_startup_is_a_one_line_error(tmp_path):
    path = tmp_path / "actions.toml"
    path.write_text('[actions.a]\nargs = ["/bin/echo", "{x}"]\n[actions.a.params.x]\n'
                    'type = "string"\n')
    done = subprocess.run([PY, "-m", "taskrunner", "--port", "0", "--actions", str(path)],
                          cwd=REPO, env=dict(os.environ), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [f"taskrunner: --actions '{path}': action 'a' param 'x': no bound: a "
                     "string needs enum, pattern or max_length (pattern = \".*\" to take any "
                     "string, said on purpose)"]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("config", ["memory", "sqlite"], indirect=True)
async def test_a_finished_job_and_the_listing_keep_the_action_and_its_params(instance):
    code, job = await call(instance, "ops", "POST", "/actions/wait/jobs",
                           {"params": {"seconds": 0}})
    assert code == 202

    async def ended():
        _, body = await call(instance, "ops", "GET", f"/jobs/{job['id']}")
        return body["state"] == "exited"

    await until(ended)
    code, body = await call(instance, "root", "GET", "/jobs")
    listed = [j for j in body["jobs"] if j["id"] == job["id"]]
    assert [(j["action"], j["params"]) for j in listed] == [("wait", {"seconds": 0})]


@pytest.mark.gen_test(timeout=30)
async def test_sighup_rereads_the_actions_file_and_keeps_the_old_set_on_a_cut_one(
        spawn_instance, tmp_path):
    # --actions without --callers: SIGHUP re-reads the file instead of recycling.
    path = tmp_path / "actions.toml"
    path.write_text(ACTIONS)
    child = spawn_instance("--actions", str(path))
    path.write_text(ACTIONS[:ACTIONS.index("max_length = 20")])  # cut before a bound
    child.signal(signal.SIGHUP)
    assert wait_until(lambda: "actions not reloaded" in child.output())
    line = next(line for line in child.output().splitlines() if "not reloaded" in line)
    assert f"--actions '{path}': action 'greet' param 'greeting': no bound" in line
    code, body = await call(child, None, "POST", "/actions/greet", {"params": {"name": "A"}})
    assert (code, body["stdout"]) == (200, "hello, A!\n")
    path.write_text('[actions.fresh]\nargs = ["/bin/echo", "fresh"]\n')
    child.signal(signal.SIGHUP)
    assert wait_until(lambda: "actions reloaded" in child.output())
    code, body = await call(child, None, "POST", "/actions/fresh", {})
    assert (code, body["stdout"]) == (200, "fresh\n")
    code, body = await call(child, None, "POST", "/actions/greet", {})
    assert (code, body["error"]) == (404, "action_not_found")
    assert child.proc.poll() is None  # not recycled

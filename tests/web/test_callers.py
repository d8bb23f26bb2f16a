"""--callers: per-caller tokens, scopes, allow lists, shares and limits, on real instances."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest
from helpers import PY, REPO, token_sha256, until, wait_until

from taskrunner.web.peers import default_name

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789",
          "carol": "carol-token-0123456789", "root": "admin-token-0123456789",
          "dave": "dave-token-0123456789"}


def auth(name):
    return {"Authorization": f"Bearer {TOKENS[name]}"}


CALLERS = f"""
realm = "test"

[callers.alice]
token_sha256 = "{token_sha256(TOKENS['alice'])}"
scopes = ["run", "jobs"]
allow = ["echo", "sleep", "sh"]
max_running = 1
limits = "instance"

[callers.bob]
token_sha256 = "{token_sha256(TOKENS['bob'])}"
scopes = ["run", "jobs"]
allow = ["true", "sleep", "sh"]
max_running = "instance"

[callers.bob.limits]
user = "instance"
limit-as = "instance"
limit-cpu = "instance"
limit-nproc = "instance"
limit-fsize = "instance"
limit-nofile = 37

[callers.carol]
token_sha256 = "{token_sha256(TOKENS['carol'])}"
scopes = ["run"]
allow = "instance"
max_running = "instance"
limits = "instance"

[callers.root]
token_sha256 = "{token_sha256(TOKENS['root'])}"
scopes = ["admin"]
allow = "instance"
max_running = "instance"
limits = "instance"
"""


def entry(name="a", secret="x", **keys):
    """One caller's table with every key written out; ``keys`` replace or (None) drop some."""
    values = {"token_sha256": f'"{token_sha256(secret)}"', "scopes": '["run"]',
              "allow": '"instance"', "max_running": '"instance"', "limits": '"instance"', **keys}
    return f"[callers.{name}]\n" + "".join(
        f"{key} = {value}\n" for key, value in values.items() if value is not None)


REALM = 'realm = "test"\n'


def limits(**values):
    """A limits table naming every per-caller setting: ``values``, the rest "instance"."""
    names = ("user", "limit-as", "limit-cpu", "limit-nproc", "limit-fsize", "limit-nofile")
    inherit = '"instance"'
    return "{ " + ", ".join(f"{name} = {values.get(name.replace('-', '_'), inherit)}"
                            for name in names) + " }"


@pytest.fixture
def callers_file(tmp_path):
    path = tmp_path / "callers.toml"
    path.write_text(CALLERS)
    return path


@pytest.fixture
def child(spawn_instance, callers_file):
    return spawn_instance("--callers", str(callers_file), "--max-running", "8")


async def call(child, name, method, path, body=None):
    response = await child.request(method, path, body, headers=auth(name) if name else None)
    return response.code, json.loads(response.body) if response.body.startswith(b"{") else None


@pytest.mark.gen_test(timeout=30)
async def test_each_caller_runs_only_its_own_programs(child):
    code, body = await call(child, "alice", "POST", "/run", {"args": ["echo", "hi"]})
    assert (code, body["stdout"]) == (200, "hi\n")
    code, body = await call(child, "alice", "POST", "/run", {"args": ["true"]})
    assert (code, body["error"]) == (403, "program_not_allowed")
    code, body = await call(child, "bob", "POST", "/run", {"args": ["true"]})
    assert (code, body["status"]) == (200, 0)
    code, body = await call(child, "bob", "POST", "/run", {"args": ["echo", "hi"]})
    assert (code, body["error"]) == (403, "program_not_allowed")
    # carol's allow is "instance": the instance's own policy (no --allow: any program)
    code, body = await call(child, "carol", "POST", "/run", {"args": ["echo", "hi"]})
    assert (code, body["stdout"]) == (200, "hi\n")
    # the same holds for jobs
    code, body = await call(child, "alice", "POST", "/jobs", {"args": ["true"]})
    assert (code, body["error"]) == (403, "program_not_allowed")


@pytest.mark.gen_test(timeout=30)
async def test_a_caller_sees_follows_and_cancels_only_its_own_jobs_and_admin_all(child):
    code, job = await call(child, "alice", "POST", "/jobs", {"args": ["sleep", "30"]})
    assert code == 202 and job["caller"] == "alice"
    path = f"/jobs/{job['id']}"
    for method, route in (("GET", path), ("DELETE", path), ("GET", path + "/output")):
        code, body = await call(child, "bob", method, route)
        assert (code, body["error"]) == (404, "job_not_found"), (method, route)
    code, body = await call(child, "bob", "GET", "/jobs")
    assert (code, body["jobs"]) == (200, [])
    code, body = await call(child, "alice", "GET", "/jobs")
    assert [j["id"] for j in body["jobs"]] == [job["id"]]
    code, body = await call(child, "bob", "POST", "/jobs", {"args": ["true"]})
    assert code == 202 and body["caller"] == "bob"
    code, body = await call(child, "root", "GET", "/jobs")
    assert {(j["id"], j["caller"]) for j in body["jobs"]} == {
        (job["id"], "alice"), (body["jobs"][0]["id"], "bob")}
    code, body = await call(child, "root", "DELETE", path)
    assert (code, body["state"], body["caller"]) == (200, "cancelled", "alice")


@pytest.mark.gen_test(timeout=30)
async def test_a_caller_over_its_share_gets_429_while_another_still_gets_slots(child):
    code, job = await call(child, "alice", "POST", "/jobs", {"args": ["sleep", "30"]})
    assert (code, job["state"]) == (202, "running")
    code, body = await call(child, "alice", "POST", "/run", {"args": ["echo", "x"]})
    assert (code, body["error"]) == (429, "too_many_requests")
    assert "alice" in body["message"] and "max_running 1" in body["message"]
    code, body = await call(child, "alice", "POST", "/jobs", {"args": ["echo", "x"]})
    assert (code, body["error"]) == (429, "too_many_requests")
    code, body = await call(child, "bob", "POST", "/run", {"args": ["true"]})
    assert (code, body["status"]) == (200, 0)
    code, body = await call(child, "bob", "POST", "/jobs", {"args": ["sleep", "30"]})
    assert (code, body["state"]) == (202, "running")
    await call(child, "bob", "DELETE", f"/jobs/{body['id']}")
    # the share is given back when the job ends
    code, body = await call(child, "alice", "DELETE", f"/jobs/{job['id']}")
    assert (code, body["state"]) == (200, "cancelled")
    code, body = await call(child, "alice", "POST", "/run", {"args": ["echo", "x"]})
    assert (code, body["stdout"]) == (200, "x\n")


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("name,method,path", [
    ("carol", "POST", "/jobs"), ("carol", "GET", "/jobs"), ("carol", "GET", "/jobs/x.y"),
    ("carol", "GET", "/metrics"), ("alice", "GET", "/metrics"), ("root", "POST", "/run"),
])
async def test_a_route_outside_the_callers_scopes_is_403_missing_scope(child, name, method,
                                                                        path):
    body = {"args": ["true"]} if method == "POST" else None
    code, answer = await call(child, name, method, path, body)
    assert (code, answer["error"]) == (403, "missing_scope")
    assert name in answer["message"]


@pytest.mark.gen_test(timeout=30)
async def test_admin_reads_metrics_labelled_by_caller_and_anyone_known_reads_openapi(child):
    await call(child, "alice", "POST", "/run", {"args": ["echo"]})
    await call(child, None, "POST", "/run", {"args": ["echo"]})
    response = await child.request("GET", "/metrics", headers=auth("root"))
    assert response.code == 200
    text = response.body.decode()
    assert 'taskrunner_http_requests_total{caller="alice",status="200"} 1.0' in text
    assert 'taskrunner_http_requests_total{caller="",status="401"} 1.0' in text
    for name in ("alice", "carol"):
        assert (await child.request("GET", "/openapi.json", headers=auth(name))).code == 200
    code, body = await call(child, "dave", "GET", "/openapi.json")
    assert (code, body["error"]) == (401, "unauthorized")


@pytest.mark.gen_test(timeout=30)
async def test_a_callers_limits_override_the_instances(child):
    script = {"args": ["sh", "-c", "ulimit -n"]}
    code, body = await call(child, "bob", "POST", "/run", script)
    assert (code, body["stdout"]) == (200, "37\n")
    code, body = await call(child, "alice", "POST", "/run", script)
    assert code == 200 and body["stdout"] != "37\n"


@pytest.mark.gen_test(timeout=30)
async def test_the_access_log_line_names_the_caller(child):
    await call(child, "alice", "POST", "/run", {"args": ["echo"]})
    await call(child, "carol", "GET", "/metrics")
    await call(child, None, "GET", "/jobs")
    assert wait_until(lambda: "GET /jobs 401" in child.output())
    lines = child.output().splitlines()
    assert any("POST /run 200" in line and " caller=alice " in line for line in lines)
    assert any("GET /metrics 403" in line and " caller=carol " in line for line in lines)
    assert any("GET /jobs 401" in line and " caller=- " in line for line in lines)
    assert TOKENS["alice"] not in child.output()


@pytest.mark.gen_test(timeout=30)
async def test_sighup_rereads_the_file_without_dropping_a_request(child, callers_file):
    in_flight = asyncio.ensure_future(
        child.request("POST", "/run", {"args": ["sleep", "1"]}, headers=auth("alice")))
    deadline = time.monotonic() + 10
    while (await child.request("GET", "/healthz", headers=auth("bob"))).body.find(
            b'"running":1') < 0:
        assert time.monotonic() < deadline, "the command did not start"
        await asyncio.sleep(0.02)  # a polling step with a deadline, not a synchronisation
    callers_file.write_text(CALLERS.replace("[callers.alice]", "[callers.dave]").replace(
        token_sha256(TOKENS["alice"]), token_sha256(TOKENS["dave"])))
    child.signal(signal.SIGHUP)
    assert wait_until(lambda: "callers reloaded" in child.output())
    assert (await in_flight).code == 200  # alice's request, in flight across the reload
    code, body = await call(child, "dave", "POST", "/run", {"args": ["echo", "new"]})
    assert (code, body["stdout"]) == (200, "new\n")
    code, body = await call(child, "alice", "POST", "/run", {"args": ["echo"]})
    assert (code, body["error"]) == (401, "unauthorized")
    assert child.proc.poll() is None  # SIGHUP did not recycle the instance

    callers_file.write_text("[callers.dave\n")  # malformed: the callers in force stay
    child.signal(signal.SIGHUP)
    assert wait_until(lambda: "callers not reloaded" in child.output())
    line = next(line for line in child.output().splitlines() if "not reloaded" in line)
    assert "not valid TOML" in line and str(callers_file) in line
    code, body = await call(child, "dave", "POST", "/run", {"args": ["echo", "still"]})
    assert (code, body["stdout"]) == (200, "still\n")


@pytest.mark.gen_test(timeout=30)
async def test_a_callers_share_survives_a_reload(child, callers_file):
    code, job = await call(child, "alice", "POST", "/jobs", {"args": ["sleep", "30"]})
    assert code == 202
    child.signal(signal.SIGHUP)  # the same file: alice keeps her running job's count
    assert wait_until(lambda: child.output().count("callers reloaded") == 1)
    code, body = await call(child, "alice", "POST", "/run", {"args": ["echo"]})
    assert (code, body["error"]) == (429, "too_many_requests")
    # alice left out, then named again: her job still counts
    callers_file.write_text(CALLERS.replace("[callers.alice]", "[callers.dave]").replace(
        token_sha256(TOKENS["alice"]), token_sha256(TOKENS["dave"])))
    child.signal(signal.SIGHUP)
    assert wait_until(lambda: child.output().count("callers reloaded") == 2)
    callers_file.write_text(CALLERS)
    child.signal(signal.SIGHUP)
    assert wait_until(lambda: child.output().count("callers reloaded") == 3)
    code, body = await call(child, "alice", "POST", "/run", {"args": ["echo"]})
    assert (code, body["error"]) == (429, "too_many_requests")
    await call(child, "alice", "DELETE", f"/jobs/{job['id']}")
    code, body = await call(child, "alice", "POST", "/run", {"args": ["echo", "x"]})
    assert (code, body["stdout"]) == (200, "x\n")


@pytest.mark.gen_test(timeout=60)
async def test_the_job_store_keeps_each_jobs_caller(spawn_instance, callers_file, tmp_path):
    args = ("--callers", str(callers_file), "--state-dir", str(tmp_path / "state"))
    first = spawn_instance(*args)
    code, job = await call(first, "alice", "POST", "/jobs", {"args": ["echo", "kept"]})
    assert code == 202
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    second = spawn_instance(*args)
    code, body = await call(second, "alice", "GET", f"/jobs/{job['id']}")
    assert (code, body["caller"], body["stdout"]) == (200, "alice", "kept\n")
    code, body = await call(second, "bob", "GET", f"/jobs/{job['id']}")
    assert code == 404


@pytest.mark.gen_test(timeout=60)
async def test_with_a_job_index_a_caller_lists_only_its_own_jobs(spawn_instance, callers_file,
                                                                 shared_index):
    # What the stack and the cluster run: listings come from the index (SQLite or
    # PostgreSQL), filtered by caller there, not from the instance's memory.
    child = spawn_instance("--callers", str(callers_file), *shared_index)
    owned = {"alice": [], "bob": []}
    for name, args in (("alice", ["echo", "a"]), ("bob", ["true"]), ("bob", ["true"])):
        code, job = await call(child, name, "POST", "/jobs", {"args": args})
        assert code == 202, job
        owned[name].append(job["id"])

    async def all_done():
        for name, ids in owned.items():
            for job_id in ids:
                _, job = await call(child, name, "GET", f"/jobs/{job_id}")
                if job["state"] != "exited":
                    return False
        return True

    await until(all_done, 20)
    for name, ids in owned.items():
        for query in ("", "?state=exited", "?limit=1"):
            code, body = await call(child, name, "GET", f"/jobs{query}")
            assert code == 200, body
            listed = [job["id"] for job in body["jobs"]]
            assert set(listed) <= set(ids), (name, query, body)
            assert {job["caller"] for job in body["jobs"]} <= {name}
        code, body = await call(child, name, "GET", "/jobs")
        assert sorted(job["id"] for job in body["jobs"]) == sorted(ids)
        # Paging through its own jobs one at a time meets no one else's.
        seen, before = [], ""
        while True:
            code, body = await call(child, name, "GET", f"/jobs?limit=1{before}")
            seen += [job["id"] for job in body["jobs"]]
            if body["next"] is None:
                break
            before = f"&before={body['next']}"
        assert sorted(seen) == sorted(ids), name
    code, body = await call(child, "root", "GET", "/jobs")  # admin: everyone's
    assert sorted(job["id"] for job in body["jobs"]) == sorted(owned["alice"] + owned["bob"])


@pytest.mark.gen_test(timeout=30)
async def test_a_token_whose_hash_shares_all_but_a_part_of_a_callers_is_refused(
        spawn_instance, tmp_path):
    # Only a token whose whole SHA-256 matches is let in. No SHA-256 collision is at hand,
    # but the file is: callers whose stored hashes share a prefix, a suffix or all but one
    # byte with the hash of dave's token (dave has no entry).
    wanted = token_sha256(TOKENS["dave"])
    near = {
        "alice": wanted[:8] + token_sha256(TOKENS["alice"])[8:],   # the first 4 bytes
        "bob": wanted[:62] + ("00" if wanted[62:] != "00" else "01"),  # all but the last
        "carol": ("00" if wanted[:2] != "00" else "01") + wanted[2:],  # all but the first
    }
    text = CALLERS
    for name, digest in near.items():
        text = text.replace(token_sha256(TOKENS[name]), digest)
    path = tmp_path / "near.toml"
    path.write_text(text)
    child = spawn_instance("--callers", str(path))
    for method, route, body in (("POST", "/run", {"args": ["true"]}), ("GET", "/jobs", None)):
        code, answer = await call(child, "dave", method, route, body)
        assert (code, answer.get("error")) == (401, "unauthorized"), (route, answer)
    code, answer = await call(child, "root", "GET", "/jobs")  # the file itself is in use
    assert code == 200, answer


def _healthz(child):  # outside an event loop only
    with urllib.request.urlopen(child.url + "/healthz", timeout=10) as response:
        return json.loads(response.read())


def _start(args, env=None):
    env = {k: v for k, v in {**os.environ, **(env or {})}.items()}
    return subprocess.run([PY, "-m", "taskrunner", "--port", "0", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("content,says", [
    ("[callers.a\n", "not valid TOML"),
    (REALM, "no callers"),
    (entry(), "realm missing"),
    ('realm = "-"\n' + entry(), "realm must be"),
    (REALM + "[other]\n", "unknown top-level key"),
    (REALM + entry(scopes='["root"]'), "scopes must be"),
    (REALM + entry(token_sha256='"secret"'), "64 hex digits"),
    (REALM + entry(token='"x"'), "unknown key(s) token"),
    (REALM + entry(allow='["no-such-program-xyz"]'), "allow: cannot start 'no-such-program-xyz'"),
    (REALM + entry(allow='"all"'), "allow must be a list of program names, \"instance\""),
    (REALM + entry(allow=None), "caller 'a': allow missing"),
    (REALM + entry(max_running=None, limits=None), "caller 'a': max_running, limits missing"),
    (REALM + entry(max_running="0"), "max_running must be"),
    (REALM + entry(limits="{ port = 80 }"), "'port' is not a per-caller setting"),
    (REALM + entry(limits=limits(limit_as=-1)), "limit_as must be >= 0"),
    (REALM + entry(limits=limits(limit_as='"1G"')), "limit-as must be a int"),
    (REALM + entry(limits="{ limit-as = 1024 }"),
     "caller 'a': limits: user, limit-cpu, limit-nproc, limit-fsize, limit-nofile missing"),
    (REALM + entry() + entry("b", scopes='["jobs"]'), "the same token"),
])
def test_a_bad_callers_file_at_startup_is_a_one_line_error(tmp_path, content, says):
    path = tmp_path / "callers.toml"
    path.write_text(content)
    proc = _start(["--callers", str(path)])
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"taskrunner: --callers '{path}'") and says in lines[0], lines[0]


def test_a_missing_callers_file_at_startup_is_a_one_line_error(tmp_path):
    proc = _start(["--callers", str(tmp_path / "absent.toml")])
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "No such file or directory" in proc.stderr


def test_callers_and_a_token_together_are_refused(callers_file):
    proc = _start(["--callers", str(callers_file)], env={"TASKRUNNER_TOKEN": "tok"})
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "--callers and a token" in proc.stderr


def test_callers_alone_are_the_token_a_public_address_needs(spawn_instance, callers_file):
    # Protected mode's other rule, TLS, is waived with --insecure-http (tests/web/test_tls.py).
    child = spawn_instance("--callers", str(callers_file), "--address", "0.0.0.0",
                           "--insecure-http")
    assert _healthz(child)["status"] == "ok"


@pytest.mark.gen_test(timeout=30)
async def test_healthz_is_whole_for_any_caller_and_the_status_only_for_strangers(child):
    for name in ("carol", "root"):  # a caller of any scope
        code, body = await call(child, name, "GET", "/healthz")
        assert (code, body["pid"], body["instance"]) == (200, child.proc.pid,
                                                           default_name(child.port))
    for headers in (None, {"Authorization": "Bearer not-a-caller-0123456789"}):
        response = await child.request("GET", "/healthz", headers=headers)
        assert (response.code, json.loads(response.body)) == (200, {"status": "ok"})


def test_hash_token_prints_the_sha256_of_the_token_on_stdin():
    proc = subprocess.run([PY, "-m", "taskrunner", "hash-token"], cwd=REPO,
                          input="  my-token-123\n", capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stdout) == (0, token_sha256("my-token-123") + "\n")
    assert "warning: the token has 12 characters" in proc.stderr
    long_token = "x" * 20
    proc = subprocess.run([PY, "-m", "taskrunner", "hash-token"], cwd=REPO, input=long_token,
                          capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, token_sha256(long_token) + "\n", "")
    proc = subprocess.run([PY, "-m", "taskrunner", "hash-token"], cwd=REPO,
                          input="two words\n", capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "whitespace" in proc.stderr and proc.stdout == ""


@pytest.mark.gen_test(timeout=30)
async def test_the_json_access_log_has_the_caller_as_a_key(spawn_instance, callers_file):
    child = spawn_instance("--callers", str(callers_file), "--log-format", "json")
    await call(child, "bob", "POST", "/run", {"args": ["true"]})
    await call(child, "dave", "POST", "/run", {"args": ["true"]})
    assert wait_until(lambda: child.output().count('"taskrunner.access"') >= 2)
    lines = [json.loads(line) for line in child.output().splitlines()
             if '"taskrunner.access"' in line]
    assert [(line["status"], line["caller"]) for line in lines] == [(200, "bob"), (401, None)]


@pytest.mark.gen_test(timeout=30)
async def test_the_single_token_is_one_implicit_caller_with_every_scope(spawn_instance):
    child = spawn_instance(env={"TASKRUNNER_TOKEN": TOKENS["alice"]})
    code, job = await call(child, "alice", "POST", "/jobs", {"args": ["true"]})
    assert (code, job["caller"]) == (202, "token")
    assert (await child.request("GET", "/metrics", headers=auth("alice"))).code == 200
    assert wait_until(lambda: "caller=token" in child.output())


def _cuts(text):
    """``text`` cut after each of its lines (the whole left out): for each cut, the cut
    text, whether it ends where a caller's table ends (a whole file of fewer callers), the
    last caller it names, and the first key it lacks (from the next line of ``text``)."""
    lines = text.splitlines(keepends=True)
    for k in range(len(lines)):
        rest = [line.strip() for line in lines[k:] if line.strip()]
        before = [line.strip() for line in lines[:k] if line.strip().startswith("[callers.")]
        caller = before[-1].split(".")[1].rstrip("]") if before else None
        following = rest[0]
        whole = caller is not None and following.startswith("[callers.") and \
            following.count(".") == 1
        key = (following.split("=")[0].strip() if "=" in following
               else following.strip("[]").split(".")[-1])
        yield "".join(lines[:k]), whole, caller, key


def _says_what_is_missing(line, caller, key):
    if caller is None:
        return "realm missing" in line or "no callers" in line
    return f"caller {caller!r}" in line and "missing" in line and key in line


def test_a_callers_file_cut_at_any_line_is_refused_at_startup_naming_the_caller_and_key(
        tmp_path, spawn_instance):
    path = tmp_path / "callers.toml"
    for text, whole, caller, key in _cuts(CALLERS):
        path.write_text(text)
        if whole:  # a whole file of the callers before the cut: nothing widened
            child = spawn_instance("--callers", str(path))
            names = CALLERS[:len(text)].count("[callers.") - text.count(".limits]")
            assert wait_until(lambda child=child: "callers from" in child.output())
            listed = child.output().split("callers from", 1)[1].splitlines()[0]
            assert listed.split(": ", 1)[1].count(", ") == names - 1, listed
            child.stop()
            continue
        proc = _start(["--callers", str(path)])
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, (text, proc.stderr)
        assert _says_what_is_missing(lines[0], caller, key), (text, lines[0])


@pytest.mark.gen_test(timeout=120)
async def test_a_callers_file_cut_at_any_line_is_refused_on_sighup_and_the_old_callers_stay(
        child, callers_file):
    refused = reloaded = wholes = 0
    for text, whole, caller, key in _cuts(CALLERS):
        callers_file.write_text(text)  # half-written, as a copy in progress leaves it
        child.signal(signal.SIGHUP)
        if whole:  # a whole file of fewer callers: loaded; then the whole file again
            wholes += 1
            reloaded += 1
            assert wait_until(lambda n=reloaded: child.output().count("callers reloaded") == n)
            callers_file.write_text(CALLERS)
            child.signal(signal.SIGHUP)
            reloaded += 1
            assert wait_until(lambda n=reloaded: child.output().count("callers reloaded") == n)
            continue
        refused += 1
        assert wait_until(lambda n=refused: child.output().count("callers not reloaded") == n)
        line = [line for line in child.output().splitlines() if "not reloaded" in line][-1]
        assert _says_what_is_missing(line, caller, key), (text, line)
        # alice's allow list still holds: the command the attack ran is still refused
        code, body = await call(child, "alice", "POST", "/run", {"args": ["id"]})
        assert (code, body["error"]) == (403, "program_not_allowed"), text
    assert refused >= 25 and wholes == 6  # three callers end, each cut before a blank line too
    code, body = await call(child, "bob", "POST", "/run", {"args": ["sh", "-c", "ulimit -n"]})
    assert (code, body["stdout"]) == (200, "37\n")  # bob's limits too

def _held_roots(pid):
    """The sandbox work roots the instance ``pid`` holds (a locked fd on each), and its fd
    count."""
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue  # closed meanwhile
    return {link for link in links if link.startswith("/var/tmp/taskrunner-sandbox-")}, len(links)


@pytest.mark.skipif(shutil.which("bwrap") is None and not os.environ.get("CI"),
                    reason="bubblewrap (bwrap) is not installed: scripts/install")
@pytest.mark.gen_test(timeout=90)
async def test_reloads_close_the_old_callers_sandboxes_and_a_stop_closes_all(
        spawn_instance, callers_file):
    child = spawn_instance("--sandbox", "--callers", str(callers_file), "--max-running", "8")
    pid = child.proc.pid
    code, _ = await call(child, "alice", "POST", "/run", {"args": ["echo"]})
    assert code == 200  # what a first request opens for good is not counted
    first, fds = _held_roots(pid)
    assert len(first) == 5  # the instance's own and one per caller
    seen = set(first)
    # A command running across reloads keeps its work directory: it writes there after them.
    running = asyncio.ensure_future(child.request("POST", "/run", {"args": [
        "sh", "-c", "sleep 1.5; echo done > out && cat out"]}, headers=auth("alice")))
    await asyncio.sleep(0.5)
    for n in range(1, 21):
        child.signal(signal.SIGHUP)
        assert wait_until(lambda n=n: child.output().count("callers reloaded") == n)
        seen |= _held_roots(pid)[0]
    response = await running
    assert json.loads(response.body)["stdout"] == "done\n", response.body
    assert len(seen) == 5 + 4 * 20
    assert wait_until(lambda: len(_held_roots(pid)[0]) == 5 and _held_roots(pid)[1] <= fds,
                      10), (_held_roots(pid), fds)
    now = _held_roots(pid)[0]
    assert not [root for root in seen - now if os.path.exists(root)]
    child.signal(signal.SIGTERM)
    assert child.wait() == 0
    assert not [root for root in seen if os.path.exists(root)]

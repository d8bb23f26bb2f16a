"""Callers over a shared job index (SQLite and PostgreSQL, real child instances): a job's
owner is its realm and its caller, so a caller of another callers file that happens to have
the same name owns nothing, while a caller whose token is replaced keeps its jobs; instances
that disagree on the realm do not run beside each other; the index's schema is upgraded
from the version before realms, and an index newer than the code is refused.
"""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from helpers import PY, REPO, token_sha256, until, wait_until

LOST_AFTER = "3"


def callers_file(path, realm, tokens):
    """A callers file of ``realm`` whose callers are ``tokens`` (name: token); ``root`` is
    an admin, the others have run and jobs. Written by rename, as docs/security.md says."""
    text = f'realm = "{realm}"\n'
    for name, token in tokens.items():
        scopes = '["admin"]' if name == "root" else '["run", "jobs"]'
        text += (f'\n[callers.{name}]\ntoken_sha256 = "{token_sha256(token)}"\nscopes = {scopes}\n'
                 'allow = "instance"\nmax_running = "instance"\nlimits = "instance"\n')
    temporary = f"{path}.new"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)
    return str(path)


async def call(child, token, method, path, body=None):
    headers = {"Authorization": f"Bearer {token}"}
    response = await child.request(method, path, body, headers=headers)
    return response.code, json.loads(response.body) if response.body.startswith(b"{") else None


def start_refused(*args):
    """Start an instance that must refuse to: its exit status and stderr lines."""
    proc = subprocess.run([PY, "-m", "taskrunner", "--port", "0", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stderr.strip().splitlines()


@pytest.mark.gen_test(timeout=120)
async def test_a_caller_of_another_file_with_the_same_name_owns_nothing_a_rotated_one_keeps_all(
        spawn_instance, shared_index, tmp_path):
    a_file = callers_file(tmp_path / "a.toml", "site-a",
                          {"ci": "a-ci-token-0123456789", "ops": "a-ops-token-0123456789"})
    b_file = callers_file(tmp_path / "b.toml", "site-b",
                          {"ci": "b-ci-token-0123456789", "root": "b-root-token-0123456789"})
    flags = ("--lost-after", LOST_AFTER, *shared_index)
    a = spawn_instance("--instance", "a", "--callers", a_file, *flags)
    code, running = await call(a, "a-ci-token-0123456789", "POST", "/jobs",
                               {"args": ["sleep", "600"]})
    assert code == 202
    code, done = await call(a, "a-ci-token-0123456789", "POST", "/jobs",
                            {"args": ["echo", "a's output"]})
    assert code == 202
    # Another caller of the same file and index sees none of ci's jobs (the caller clause).
    code, listed = await call(a, "a-ops-token-0123456789", "GET", "/jobs")
    assert (code, listed["jobs"]) == (200, [])
    assert wait_until(lambda: stored_state(shared_index, done["id"]) == "exited", 10)
    a.signal(signal.SIGKILL)  # its running job stays running in the index
    a.wait()

    b = spawn_instance("--instance", "b", "--callers", b_file, *flags)
    for token in ("b-ci-token-0123456789", "b-root-token-0123456789"):
        code, listed = await call(b, token, "GET", "/jobs")
        assert (code, listed["jobs"]) == (200, []), token
        for job in (running, done):
            path = f"/jobs/{job['id']}"
            for method, route in (("GET", path), ("GET", path + "/output"), ("DELETE", path)):
                code, body = await call(b, token, method, route)
                assert (code, body["error"]) == (404, "job_not_found"), (token, method, route)
    code, own = await call(b, "b-ci-token-0123456789", "POST", "/jobs", {"args": ["true"]})
    assert code == 202
    b.signal(signal.SIGTERM)
    assert b.wait() == 0

    # a comes back with ci's token replaced (same realm, same name): ci keeps its jobs.
    rotated = callers_file(tmp_path / "a.toml", "site-a", {"ci": "a-ci-token-rotated-42"})
    again = spawn_instance("--instance", "a", "--callers", rotated, *flags)
    code, listed = await call(again, "a-ci-token-rotated-42", "GET", "/jobs")
    assert code == 200
    assert {(job["id"], job["state"]) for job in listed["jobs"]} == {
        (running["id"], "lost"), (done["id"], "exited")}
    code, body = await call(again, "a-ci-token-rotated-42", "GET", f"/jobs/{done['id']}")
    assert (code, body["stdout"], body["caller"]) == (200, "a's output\n", "ci")
    code, body = await call(again, "a-ci-token-rotated-42", "GET", f"/jobs/{own['id']}")
    assert code == 404  # b's ci's job stays b's
    code, body = await call(again, "a-ci-token-0123456789", "GET", "/jobs")
    assert code == 401


@pytest.mark.gen_test(timeout=60)
async def test_a_rotated_token_keeps_its_jobs_across_sighup_and_the_realm_cannot_change(
        spawn_instance, shared_index, tmp_path):
    path = tmp_path / "callers.toml"
    callers_file(path, "site", {"ci": "ci-token-0123456789-old"})
    child = spawn_instance("--callers", str(path), *shared_index)
    code, job = await call(child, "ci-token-0123456789-old", "POST", "/jobs",
                           {"args": ["echo", "kept"]})
    assert code == 202
    callers_file(path, "site", {"ci": "ci-token-0123456789-new"})
    child.signal(signal.SIGHUP)
    assert wait_until(lambda: "callers reloaded" in child.output())

    async def listed():
        code, body = await call(child, "ci-token-0123456789-new", "GET", "/jobs")
        return code == 200 and [entry["id"] for entry in body["jobs"]] == [job["id"]]

    await until(listed, 10)
    code, body = await call(child, "ci-token-0123456789-new", "GET", f"/jobs/{job['id']}")
    assert (code, body["stdout"]) == (200, "kept\n")
    assert (await call(child, "ci-token-0123456789-old", "GET", "/jobs"))[0] == 401

    callers_file(path, "elsewhere", {"ci": "ci-token-0123456789-other"})
    child.signal(signal.SIGHUP)
    assert wait_until(lambda: "callers not reloaded" in child.output())
    line = next(line for line in child.output().splitlines() if "not reloaded" in line)
    assert "realm 'elsewhere' is not 'site'" in line
    code, body = await call(child, "ci-token-0123456789-new", "GET", f"/jobs/{job['id']}")
    assert code == 200


def test_instances_sharing_an_index_that_disagree_on_the_realm_refuse_to_start(
        spawn_instance, shared_index, tmp_path):
    first = callers_file(tmp_path / "a.toml", "site-a", {"ci": "a-ci-token-0123456789"})
    other = callers_file(tmp_path / "b.toml", "site-b", {"ci": "b-ci-token-0123456789"})
    a = spawn_instance("--instance", "a", "--callers", first, *shared_index)
    for args in (("--callers", other), ()):  # another file's realm; no callers: realm '-'
        status, lines = start_refused("--instance", "b", *args, *shared_index)
        assert status == 1 and len(lines) == 1, lines
        assert "instance 'a' of" in lines[0] and "serves realm 'site-a'" in lines[0], lines
        realm = "'site-b'" if args else "'-'"
        assert f"this one realm {realm}" in lines[0], lines
    # The same realm from another file (its tokens rotated, say) runs beside it.
    same = callers_file(tmp_path / "c.toml", "site-a", {"ci": "c-ci-token-0123456789"})
    spawn_instance("--instance", "c", "--callers", same, *shared_index)
    # A sibling that stopped cleanly asks nothing of the next.
    a.signal(signal.SIGTERM)
    assert a.wait() == 0
    status, lines = start_refused("--instance", "b", "--callers", other, *shared_index)
    assert "serves realm 'site-a'" in lines[0]  # c still runs
    assert status == 1


# The previous version's DDL (schema 4), as it created an index: a fixture, not the code's.
SCHEMA_V4 = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, instance TEXT NOT NULL, state TEXT NOT NULL,
    args TEXT NOT NULL, status INTEGER, timed_out INTEGER NOT NULL,
    oom_killed INTEGER NOT NULL DEFAULT 0, duration {real}, stdout_truncated INTEGER NOT NULL,
    stderr_truncated INTEGER NOT NULL, created {real} NOT NULL, finished {real},
    error TEXT, caller TEXT, callback_url TEXT, callback TEXT);
CREATE TABLE chunks (job TEXT NOT NULL, seq INTEGER NOT NULL, stream INTEGER NOT NULL,
    data {blob} NOT NULL, PRIMARY KEY (job, seq)){without_rowid};
CREATE TABLE instances (name TEXT PRIMARY KEY, heartbeat {real} NOT NULL,
    holder TEXT){without_rowid};
CREATE INDEX jobs_by_created ON jobs (created, id);
CREATE INDEX jobs_by_state ON jobs (state, created, id);
CREATE INDEX jobs_by_instance ON jobs (instance, created, id)
"""
DIALECTS = {
    "--state-dir": {"real": "REAL", "blob": "BLOB", "without_rowid": " WITHOUT ROWID"},
    "--state-url-file": {"real": "DOUBLE PRECISION", "blob": "BYTEA", "without_rowid": ""},
}
OLD_JOB = "old.AAAAAAAAAAAAAAAAAAAAAA"


@contextlib.contextmanager
def connect(shared_index):
    """A connection to the index of ``shared_index`` and its placeholder, committed at exit."""
    kind, where = shared_index
    if kind == "--state-dir":
        os.makedirs(where, mode=0o700, exist_ok=True)  # as the instance makes it
        path = os.path.join(where, "jobs.sqlite3")
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            yield db, "?"
    else:
        import psycopg

        with open(where) as f:  # the --state-url-file
            url = f.read().strip()
        with psycopg.connect(url, autocommit=False) as db, db.transaction():
            yield db, "%s"


def stored_state(shared_index, job_id):
    with connect(shared_index) as (db, mark):
        row = db.execute(f"SELECT state FROM jobs WHERE id = {mark}", (job_id,)).fetchone()
        return row and row[0]


def make_version_4_index(shared_index):
    with connect(shared_index) as (db, mark):
        for statement in SCHEMA_V4.format(**DIALECTS[shared_index[0]]).split(";"):
            db.execute(statement)
        now = time.time()
        db.execute("INSERT INTO jobs VALUES (" + ", ".join([mark] * 16) + ")",
                   (OLD_JOB, "old", "exited", '["echo", "old"]', 0, 0, 0, 0.1, 0, 0,
                    now - 60, now - 59, None, "ci", None, None))
        db.execute(f"INSERT INTO chunks VALUES ({mark}, 0, 0, {mark})", (OLD_JOB, b"old\n"))
        db.execute(f"INSERT INTO instances VALUES ('old', {mark}, NULL)", (now - 50,))
        if shared_index[0] == "--state-dir":
            db.execute("PRAGMA user_version = 4")


def schema_version(shared_index):
    with connect(shared_index) as (db, _):
        if shared_index[0] == "--state-dir":
            return db.execute("PRAGMA user_version").fetchone()[0]
        return db.execute("SELECT version FROM taskrunner_schema").fetchone()[0]


@pytest.mark.gen_test(timeout=60)
async def test_a_version_4_index_is_upgraded_and_its_jobs_belong_to_no_caller_but_admin(
        spawn_instance, shared_index, tmp_path):
    make_version_4_index(shared_index)
    path = callers_file(tmp_path / "callers.toml", "site",
                        {"ci": "ci-token-0123456789", "root": "root-token-0123456789"})
    child = spawn_instance("--instance", "new", "--callers", path, *shared_index)
    assert schema_version(shared_index) == 6
    # A job stored before realms: whose it was cannot be told, so no caller owns it.
    code, body = await call(child, "ci-token-0123456789", "GET", f"/jobs/{OLD_JOB}")
    assert (code, body["error"]) == (404, "job_not_found")
    assert (await call(child, "ci-token-0123456789", "GET", "/jobs"))[1]["jobs"] == []
    code, body = await call(child, "root-token-0123456789", "GET", f"/jobs/{OLD_JOB}")
    assert (code, body["caller"], body["stdout"]) == (200, "ci", "old\n")
    # New jobs are written whole into the upgraded tables, and read back.
    code, job = await call(child, "ci-token-0123456789", "POST", "/jobs", {"args": ["true"]})
    assert code == 202
    child.signal(signal.SIGTERM)
    assert child.wait() == 0
    again = spawn_instance("--instance", "new", "--callers", path, *shared_index)
    code, listed = await call(again, "ci-token-0123456789", "GET", "/jobs")
    assert [entry["id"] for entry in listed["jobs"]] == [job["id"]]
    with connect(shared_index) as (db, _):
        realms = dict(db.execute("SELECT id, realm FROM jobs").fetchall())
        assert realms == {OLD_JOB: None, job["id"]: "site"}
        assert db.execute("SELECT realm FROM instances WHERE name = 'new'").fetchone()[0] == \
            "site"


def test_an_index_of_a_newer_schema_is_refused_in_one_line(shared_index):
    with connect(shared_index) as (db, _):
        if shared_index[0] == "--state-dir":
            db.execute("PRAGMA user_version = 7")
        else:
            db.execute("CREATE TABLE taskrunner_schema (version INTEGER NOT NULL)")
            db.execute("INSERT INTO taskrunner_schema VALUES (7)")
    status, lines = start_refused(*shared_index)
    assert status == 1 and len(lines) == 1, lines
    assert "has schema version 7, newer than this taskrunner knows (6)" in lines[0], lines
    assert schema_version(shared_index) == 7  # left as it was


# The previous release's DDL (schema 5), as it created an index: a fixture, not the code's.
SCHEMA_V5 = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, instance TEXT NOT NULL, state TEXT NOT NULL,
    args TEXT NOT NULL, status INTEGER, timed_out INTEGER NOT NULL,
    oom_killed INTEGER NOT NULL DEFAULT 0, duration {real}, stdout_truncated INTEGER NOT NULL,
    stderr_truncated INTEGER NOT NULL, created {real} NOT NULL, finished {real},
    error TEXT, caller TEXT, callback_url TEXT, callback TEXT, realm TEXT);
CREATE TABLE chunks (job TEXT NOT NULL, seq INTEGER NOT NULL, stream INTEGER NOT NULL,
    data {blob} NOT NULL, PRIMARY KEY (job, seq)){without_rowid};
CREATE TABLE instances (name TEXT PRIMARY KEY, heartbeat {real} NOT NULL,
    holder TEXT, realm TEXT){without_rowid};
CREATE INDEX jobs_by_created ON jobs (created, id);
CREATE INDEX jobs_by_state ON jobs (state, created, id);
CREATE INDEX jobs_by_instance ON jobs (instance, created, id);
CREATE INDEX jobs_by_owner ON jobs (realm, caller, created, id)
"""


def make_version_5_index(shared_index):
    with connect(shared_index) as (db, mark):
        for statement in SCHEMA_V5.format(**DIALECTS[shared_index[0]]).split(";"):
            db.execute(statement)
        now = time.time()
        db.execute("INSERT INTO jobs VALUES (" + ", ".join([mark] * 17) + ")",
                   (OLD_JOB, "old", "exited", '["echo", "old"]', 0, 0, 0, 0.1, 0, 0,
                    now - 60, now - 59, None, "ci", None, None, "site"))
        db.execute(f"INSERT INTO chunks VALUES ({mark}, 0, 0, {mark})", (OLD_JOB, b"old\n"))
        db.execute(f"INSERT INTO instances VALUES ('old', {mark}, NULL, 'site')", (now - 50,))
        if shared_index[0] == "--state-dir":
            db.execute("PRAGMA user_version = 5")
        else:
            db.execute("CREATE TABLE taskrunner_schema (version INTEGER NOT NULL)")
            db.execute("INSERT INTO taskrunner_schema VALUES (5)")


@pytest.mark.gen_test(timeout=60)
async def test_a_version_5_index_is_upgraded_in_place_and_its_jobs_keep_their_owner(
        spawn_instance, shared_index, tmp_path):
    make_version_5_index(shared_index)
    path = callers_file(tmp_path / "callers.toml", "site", {"ci": "ci-token-0123456789"})
    child = spawn_instance("--instance", "new", "--callers", path, *shared_index)
    assert schema_version(shared_index) == 6
    # The old job is its caller's still, whole; what version 6 keeps is unknown for it.
    code, body = await call(child, "ci-token-0123456789", "GET", f"/jobs/{OLD_JOB}")
    assert (code, body["stdout"], body["args"]) == (200, "old\n", ["echo", "old"])
    assert (body["timeout"], body["cwd"], body["env_names"]) == (None, None, None)
    # A new job keeps what it was given, the environment's names and not its values.
    code, job = await call(child, "ci-token-0123456789", "POST", "/jobs",
                           {"args": ["true"], "timeout": 7, "cwd": "/tmp",
                            "env": {"SECRET_ONE": "hunter2", "B": "x"}})
    assert code == 202
    child.signal(signal.SIGTERM)
    assert child.wait() == 0
    again = spawn_instance("--instance", "new", "--callers", path, *shared_index)
    code, body = await call(again, "ci-token-0123456789", "GET", f"/jobs/{job['id']}")
    assert (body["timeout"], body["cwd"], body["env_names"]) == (7, "/tmp", ["B", "SECRET_ONE"])
    code, listed = await call(again, "ci-token-0123456789", "GET", "/jobs")
    assert [entry["id"] for entry in listed["jobs"]] == [job["id"], OLD_JOB]
    with connect(shared_index) as (db, _):
        rows = db.execute("SELECT env_names FROM jobs").fetchall()
        assert not any("hunter2" in (row[0] or "") for row in rows)

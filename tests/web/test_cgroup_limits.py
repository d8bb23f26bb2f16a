"""cgroup limits as a caller sees them: /run results, jobs, the store, metrics, the log."""

import asyncio
import contextlib
import json
import os
import sqlite3
import time

import pytest
from conftest import with_config
from helpers import PY, pid_alive, wait_done, wait_until
from test_metrics import sample, scrape

MISSING = [c for c in ("memory", "pids", "cpu") if not os.path.isdir(f"/sys/fs/cgroup/{c}")]
needs_v1 = pytest.mark.skipif(
    (bool(MISSING) or os.geteuid() != 0) and not os.environ.get("CI"),
    reason=f"needs root and cgroup v1 memory, pids and cpu (missing: {MISSING})")

ALLOCATE = [PY, "-c", "x = bytearray(200 << 20); print('survived')"]


@needs_v1
@pytest.mark.gen_test(timeout=60)
@with_config(memory_max=64)
async def test_run_over_the_memory_limit_says_oom_killed_and_the_instance_goes_on(instance):
    code, body = await instance.run({"args": ALLOCATE, "timeout": 20})
    assert code == 200
    assert body["oom_killed"] is True and body["status"] == -9
    assert "survived" not in body["stdout"]
    code, body = await instance.run({"args": ["echo", "fine"]})
    assert (code, body["stdout"], body["oom_killed"]) == (200, "fine\n", False)
    text = await scrape(instance)
    assert sample(text, "taskrunner_command_oom_kills_total") == 1
    response = await instance.request("GET", "/healthz")
    assert response.code == 200


@needs_v1
@pytest.mark.gen_test(timeout=60)
async def test_a_job_killed_by_the_memory_limit_says_so_and_the_store_keeps_it(
        spawn_instance, tmp_path):
    state_dir = tmp_path / "state"
    child = spawn_instance("--memory-max", "64", "--state-dir", str(state_dir))
    assert "cgroup limits (memory): cgroup v1 under" in child.output()
    response = await child.request("POST", "/jobs", {"args": ALLOCATE, "timeout": 20})
    assert response.code == 202
    job_id = json.loads(response.body)["id"]
    body = await wait_done(child, job_id, timeout=30)
    assert (body["state"], body["status"], body["oom_killed"]) == ("exited", -9, True)
    child.signal(15)
    assert child.wait() == 0
    with contextlib.closing(sqlite3.connect(state_dir / "jobs.sqlite3")) as db:
        assert db.execute("SELECT oom_killed FROM jobs WHERE id = ?", (job_id,)).fetchone() == (1,)
    # A restarted instance serves the job as stored.
    child = spawn_instance("--state-dir", str(state_dir))
    response = await child.request("GET", f"/jobs/{job_id}")
    assert json.loads(response.body)["oom_killed"] is True


@needs_v1
@pytest.mark.gen_test(timeout=60)
@with_config(pids_max=30)
async def test_cancelling_a_job_kills_its_setsid_escapee(instance):
    response = await instance.request(
        "POST", "/jobs", {"args": ["sh", "-c", "setsid sleep 1000 & echo $!; sleep 1000"],
                          "timeout": 60})
    job_id = json.loads(response.body)["id"]
    escapee = None
    deadline = time.monotonic() + 10
    while escapee is None:
        response = await instance.request("GET", f"/jobs/{job_id}")
        out = json.loads(response.body)["stdout"]
        if out.endswith("\n"):
            escapee = int(out)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    response = await instance.request("DELETE", f"/jobs/{job_id}")
    assert response.code in (200, 202)
    body = await wait_done(instance, job_id, timeout=30)
    assert body["state"] == "cancelled" and body["oom_killed"] is False
    assert wait_until(lambda: not pid_alive(escapee))


@needs_v1
@pytest.mark.gen_test(timeout=60)
async def test_shutdown_removes_the_instances_cgroups(spawn_instance):
    child = spawn_instance("--pids-max", "20", "--grace", "0.5")
    for _ in range(3):
        response = await child.request("POST", "/run", {"args": ["true"]})
        assert response.code == 200
    parent = f"/sys/fs/cgroup/pids/taskrunner-{child.proc.pid}"
    assert os.path.isdir(parent)
    child.signal(15)
    assert child.wait() == 0
    assert not os.path.exists(parent)


def test_a_store_of_schema_version_2_gains_oom_killed(tmp_path):
    from helpers import sqlite_store

    path = tmp_path / "jobs.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("""CREATE TABLE jobs (id TEXT PRIMARY KEY, instance TEXT NOT NULL,
            state TEXT NOT NULL, args TEXT NOT NULL, status INTEGER, timed_out INTEGER NOT NULL,
            duration REAL, stdout_truncated INTEGER NOT NULL, stderr_truncated INTEGER NOT NULL,
            created REAL NOT NULL, finished REAL, error TEXT)""")
        db.execute("INSERT INTO jobs VALUES ('a.B', 'a', 'exited', '[\"true\"]', 0, 0, 0.1, "
                   "0, 0, 1.0, 1.1, NULL)")
        db.execute("PRAGMA user_version = 2")
    store = sqlite_store(str(tmp_path), "a")
    store.open()
    try:
        records = store.load()
    finally:
        store.close()
    assert [(r.id, r.state, r.oom_killed) for r in records] == [("a.B", "exited", False)]

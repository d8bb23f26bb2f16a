import contextlib
import json
import os
import signal
import sqlite3

import pytest
from conftest import wait_until


def stored(state_dir):
    """{job id: state} as the instance's SQLite file holds it right now."""
    path = os.path.join(state_dir, "jobs.sqlite3")
    if not os.path.exists(path):
        return {}
    with contextlib.closing(sqlite3.connect(path)) as db:
        return dict(db.execute("SELECT id, state FROM jobs").fetchall())


async def post_job(child, body):
    response = await child.request("POST", "/jobs", body)
    assert response.code == 202, response.body
    return json.loads(response.body)


async def get_job(child, job_id):
    response = await child.request("GET", f"/jobs/{job_id}")
    return response.code, json.loads(response.body)


@pytest.mark.gen_test(timeout=60)
async def test_a_crash_leaves_finished_jobs_and_marks_running_ones_lost(spawn_instance, tmp_path):
    state_dir = str(tmp_path / "state")
    pidfile = tmp_path / "pid"
    child = spawn_instance("--state-dir", state_dir, "--instance", "one")
    finished = await post_job(child, {"args": ["sh", "-c", "echo kept; echo err >&2; exit 2"]})
    running = await post_job(child, {"args": ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"]})
    try:
        assert wait_until(lambda: stored(state_dir).get(finished["id"]) == "exited"
                          and stored(state_dir).get(running["id"]) == "running", 10)
        assert wait_until(pidfile.exists)
        _, before = await get_job(child, finished["id"])
        child.signal(signal.SIGKILL)  # no shutdown at all: the job is orphaned, not ended
        child.wait()

        again = spawn_instance("--state-dir", state_dir, "--instance", "one")
        code, lost = await get_job(again, running["id"])
        assert code == 200
        assert lost["state"] == "lost" and lost["status"] is None
        assert lost["args"] == running["args"] and lost["created"] == running["created"]
        code, kept = await get_job(again, finished["id"])
        assert code == 200 and kept == before
        assert kept["stdout"] == "kept\n" and kept["stderr"] == "err\n" and kept["status"] == 2
        listing = json.loads((await again.request("GET", "/jobs")).body)["jobs"]
        assert [job["id"] for job in listing] == [running["id"], finished["id"]]
        # The stream of a restored job replays what was kept, then the job.
        response = await again.request("GET", f"/jobs/{finished['id']}/output")
        lines = [json.loads(line) for line in response.body.decode().splitlines()]
        assert lines[-1] == kept
        # A lost job is final: DELETE changes nothing.
        response = await again.request("DELETE", f"/jobs/{running['id']}")
        assert response.code == 200 and json.loads(response.body)["state"] == "lost"
        assert wait_until(lambda: stored(state_dir)[running["id"]] == "lost", 5)
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest.mark.gen_test(timeout=60)
async def test_sigterm_cancels_running_jobs_and_stores_their_final_state(spawn_instance, tmp_path):
    state_dir = str(tmp_path / "state")
    child = spawn_instance("--state-dir", state_dir, "--instance", "two", "--grace", "0.3")
    job = await post_job(child, {"args": ["sleep", "60"]})
    child.signal(signal.SIGTERM)
    assert child.wait() == 0
    assert stored(state_dir)[job["id"]] == "cancelled"
    again = spawn_instance("--state-dir", state_dir, "--instance", "two")
    code, body = await get_job(again, job["id"])
    assert code == 200 and body["state"] == "cancelled" and body["status"] == -9


@pytest.mark.gen_test(timeout=60)
async def test_without_state_dir_jobs_live_in_memory_only(spawn_instance, tmp_path):
    child = spawn_instance("--instance", "mem")
    job = await post_job(child, {"args": ["true"]})
    child.signal(signal.SIGTERM)
    assert child.wait() == 0
    again = spawn_instance("--instance", "mem")
    code, body = await get_job(again, job["id"])
    assert code == 404 and body["error"] == "job_not_found"


@pytest.mark.gen_test(timeout=60)
async def test_ttl_applies_to_restored_jobs(spawn_instance, tmp_path):
    state_dir = str(tmp_path / "state")
    child = spawn_instance("--state-dir", state_dir, "--instance", "ttl")
    job = await post_job(child, {"args": ["true"]})
    assert wait_until(lambda: stored(state_dir).get(job["id"]) == "exited", 10)
    child.signal(signal.SIGTERM)
    assert child.wait() == 0
    again = spawn_instance("--state-dir", state_dir, "--instance", "ttl", "--job-ttl", "0.001")
    code, _ = await get_job(again, job["id"])
    assert code == 404
    assert wait_until(lambda: job["id"] not in stored(state_dir), 5)


@pytest.mark.gen_test(timeout=60)
async def test_a_stream_follows_its_job_through_a_shutdown(spawn_instance):
    child = spawn_instance("--grace", "0.3")
    job = await post_job(child, {"args": ["sh", "-c", "echo started; sleep 60"]})
    received = []

    def on_chunk(chunk):
        if not received:  # the first chunk carries "started": the job is running
            child.signal(signal.SIGTERM)
        received.append(chunk)

    response = await child.request("GET", f"/jobs/{job['id']}/output",
                                   streaming_callback=on_chunk)
    assert response.code == 200
    lines = [json.loads(line) for line in b"".join(received).decode().splitlines()]
    assert lines[0] == {"stream": "stdout", "data": "started\n"}
    assert lines[-1]["state"] == "cancelled" and lines[-1]["status"] == -9
    assert child.wait() == 0

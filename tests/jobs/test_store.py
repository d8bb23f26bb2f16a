import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import tempfile
import threading
import time
from datetime import datetime

import pytest
from helpers import PY, REPO, until, wait_for, wait_until


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
    lines[0].pop("t", None)  # the time of a chunk sent live
    assert lines[0] == {"stream": "stdout", "data": "started\n"}
    assert lines[-1]["state"] == "cancelled" and lines[-1]["status"] == -9
    assert child.wait() == 0


# -- a store that cannot write -------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs mounted on a directory of this test; unmounted however the test ends."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs",
                              str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        # Nothing else makes a real full filesystem (ENOSPC from the kernel) without root.
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)  # still open: detach


def fill(directory):
    """Write a file in ``directory`` until its filesystem has no byte left; its path."""
    path = os.path.join(directory, "fill")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (1 << 16, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * block)
    finally:
        os.close(fd)
    return path


def sample(text, name):
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return None


async def health(child):
    return json.loads((await child.request("GET", "/healthz")).body)


async def metric(child, name):
    return sample((await child.request("GET", "/metrics")).body.decode(), name)


@pytest.mark.gen_test(timeout=90)
async def test_a_full_disk_refuses_new_jobs_with_503_and_starts_nothing(tmpfs, spawn_instance,
                                                                       tmp_path):
    state_dir = str(tmpfs / "state")
    marker = tmp_path / "ran"
    child = spawn_instance("--state-dir", state_dir, "--instance", "full")
    before = await post_job(child, {"args": ["echo", "before"]})
    assert (await health(child))["job_store"] == {"ok": True, "write_failures": 0,
                                                   "error": None}
    assert await metric(child, "taskrunner_job_store_up") == 1
    filler = fill(tmpfs)

    response = await child.request("POST", "/jobs", {"args": ["touch", str(marker)]})
    assert response.code == 503, response.body
    assert json.loads(response.body)["error"] == "store_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    body = await health(child)
    assert body["status"] == "degraded" and body["job_store"]["ok"] is False
    assert "full" in body["job_store"]["error"]
    assert await metric(child, "taskrunner_job_store_up") == 0
    assert await metric(child, "taskrunner_job_store_write_failures_total") >= 1
    # Nothing of it was started, and it is not listed.
    assert await metric(child, "taskrunner_commands_started_total") == 1
    listing = json.loads((await child.request("GET", "/jobs")).body)["jobs"]
    assert [job["id"] for job in listing] == [before["id"]]
    # /run does not need the store.
    response = await child.request("POST", "/run", {"args": ["echo", "run"]})
    assert response.code == 200

    os.unlink(filler)
    after = await post_job(child, {"args": ["echo", "after"]})
    async def healthy():
        return (await health(child))["status"] == "ok"
    await until(healthy)
    assert await metric(child, "taskrunner_job_store_up") == 1
    assert not marker.exists()

    # Every job that was answered 202 survives a restart.
    child.signal(signal.SIGTERM)
    assert child.wait() == 0
    again = spawn_instance("--state-dir", state_dir, "--instance", "full")
    for job, text in ((before, "before\n"), (after, "after\n")):
        code, body = await get_job(again, job["id"])
        assert code == 200 and body["state"] == "exited" and body["stdout"] == text
    assert "Traceback" not in child.output()


@pytest.mark.gen_test(timeout=90)
async def test_a_job_that_ends_while_the_disk_is_full_is_written_once_there_is_room(
        tmpfs, spawn_instance, tmp_path):
    state_dir = str(tmpfs / "state")
    gate = tmp_path / "go"
    child = spawn_instance("--state-dir", state_dir, "--instance", "retry")
    job = await post_job(child, {"args": ["sh", "-c", f"{wait_for(gate)}; echo done"]})
    filler = fill(tmpfs)
    gate.touch()

    async def ended():
        return (await get_job(child, job["id"]))[1]["state"] == "exited"
    await until(ended)

    async def failing():
        return (await health(child))["job_store"]["ok"] is False
    await until(failing)
    # Meanwhile the instance still has the job, output and all.
    code, body = await get_job(child, job["id"])
    assert code == 200 and body["stdout"] == "done\n"
    assert stored(state_dir)[job["id"]] in ("queued", "running")  # as written before

    os.unlink(filler)
    assert wait_until(lambda: stored(state_dir)[job["id"]] == "exited", 20)

    async def healthy():
        return (await health(child))["status"] == "ok"
    await until(healthy)
    child.signal(signal.SIGKILL)  # no shutdown: what is in the file is all there is
    child.wait()
    again = spawn_instance("--state-dir", state_dir, "--instance", "retry")
    code, body = await get_job(again, job["id"])
    assert code == 200 and body["state"] == "exited" and body["stdout"] == "done\n"


@pytest.mark.gen_test(timeout=60)
async def test_a_damaged_database_is_moved_aside_with_a_warning(spawn_instance, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / "jobs.sqlite3").write_bytes(b"this is not a database\n" * 100)
    child = spawn_instance("--state-dir", str(state_dir), "--instance", "bad")
    job = await post_job(child, {"args": ["echo", "fresh"]})
    assert wait_until(lambda: stored(str(state_dir)).get(job["id"]) == "exited", 10)
    aside = [name for name in os.listdir(state_dir) if ".corrupt-" in name]
    assert len(aside) == 1
    assert (state_dir / aside[0]).read_bytes() == b"this is not a database\n" * 100
    warnings = [line for line in child.output().splitlines() if "moved aside" in line]
    assert len(warnings) == 1 and aside[0] in warnings[0]
    assert "Traceback" not in child.output()


@pytest.mark.gen_test(timeout=60)
async def test_a_read_only_database_at_startup_is_a_one_line_error(tmpfs, spawn_instance):
    state_dir = tmpfs / "state"
    child = spawn_instance("--state-dir", str(state_dir), "--instance", "ro")
    await post_job(child, {"args": ["true"]})
    child.signal(signal.SIGTERM)
    assert child.wait() == 0
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)

    started = subprocess.run(
        [PY, "-m", "taskrunner", "--port", "0", "--state-dir", str(state_dir)], cwd=REPO,
        capture_output=True, text=True, timeout=60)
    assert started.returncode == 1
    lines = started.stderr.splitlines()
    assert len(lines) == 1, started.stderr
    assert lines[0] == f"taskrunner: --state-dir {state_dir} is not writable (a read-only " \
        "filesystem, or permissions)"


# -- who can read the index -----------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the commands as nobody")
@pytest.mark.gen_test(timeout=60)
async def test_the_commands_user_can_neither_list_nor_read_the_job_index(spawn_instance):
    # Not under pytest's own temporary directory, which nobody could not even enter: here
    # only the state directory's own mode stands between the commands and the index.
    base = tempfile.mkdtemp(prefix="taskrunner-state-")
    try:
        os.chmod(base, 0o755)
        state_dir = os.path.join(base, "state")
        child = spawn_instance("--state-dir", state_dir, "--instance", "private",
                               "--user", "nobody")
        job = await post_job(child, {"args": ["echo", "another caller's output"]})
        assert wait_until(lambda: stored(state_dir).get(job["id"]) == "exited", 10)
        names = sorted(os.listdir(state_dir))
        assert names == ["jobs.sqlite3", "jobs.sqlite3-shm", "jobs.sqlite3-wal"], names
        response = await child.request("POST", "/run", {"args": ["sh", "-c", (
            f"id -un; ls {state_dir} && echo listed; "
            + "; ".join(f"cat {state_dir}/{name} > /dev/null && echo read {name}"
                        for name in names))], "cwd": "/"})  # not the checkout
        body = json.loads(response.body)
        assert body["stdout"] == "nobody\n", body
        assert body["stderr"].count("Permission denied") == 1 + len(names), body
        assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
        assert {name: stat.S_IMODE(os.stat(os.path.join(state_dir, name)).st_mode)
                for name in names} == dict.fromkeys(names, 0o600)
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("mode", [0o755, 0o1777, 0o770, "/var/tmp"])
def test_a_state_dir_others_may_read_is_refused_in_one_line_and_left_alone(tmp_path, mode):
    if mode == "/var/tmp":
        shared, mode = "/var/tmp", stat.S_IMODE(os.stat("/var/tmp").st_mode)
    else:
        shared = str(tmp_path / "shared")
        os.mkdir(shared)
        os.chmod(shared, mode)
    before = set(os.listdir(shared))
    proc = subprocess.Popen([PY, "-m", "taskrunner", "--port", "0", "--state-dir", shared],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:  # it started: stop it, and remove what it made
        proc.kill()
        _, err = proc.communicate()
    finally:
        for name in set(os.listdir(shared)) - before:
            if name.startswith("jobs.sqlite3"):
                os.unlink(os.path.join(shared, name))
    assert proc.returncode == 1, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"taskrunner: --state-dir {shared} is readable or writable by "
                               f"others (mode {mode:04o})"), lines
    assert stat.S_IMODE(os.stat(shared).st_mode) == mode


# -- what a lost job keeps, and what finished jobs cost ------------------------------------


def stored_output(state_dir, job_id):
    """{stream: bytes} of a job's output as the SQLite file holds it right now."""
    path = os.path.join(state_dir, "jobs.sqlite3")
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT stream, data FROM chunks WHERE job = ? ORDER BY seq",
                          (job_id,)).fetchall()
    out = {"stdout": b"", "stderr": b""}
    for stream, data in rows:
        out[("stdout", "stderr")[stream]] += data
    return out


def parse_time(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.gen_test(timeout=60)
async def test_a_lost_job_keeps_its_output_and_ends_when_its_instance_was_last_alive(
        spawn_instance, tmp_path):
    state_dir = str(tmp_path / "state")
    pidfile = tmp_path / "pid"
    child = spawn_instance("--state-dir", state_dir, "--instance", "lost")
    job = await post_job(child, {"args": [
        "sh", "-c", f"echo one; echo two >&2; echo $$ > {pidfile}; exec sleep 60"]})
    try:
        # Written by the periodic heartbeat, while the job runs.
        assert wait_until(lambda: stored_output(state_dir, job["id"])
                          == {"stdout": b"one\n", "stderr": b"two\n"}, 20)
        child.signal(signal.SIGKILL)
        child.wait()
        killed_at = time.time()

        again = spawn_instance("--state-dir", state_dir, "--instance", "lost")
        code, lost = await get_job(again, job["id"])
        assert code == 200 and lost["state"] == "lost" and lost["status"] is None
        assert (lost["stdout"], lost["stderr"]) == ("one\n", "two\n")
        # Its end is the last heartbeat before the kill, not the restart.
        assert parse_time(job["created"]) <= parse_time(lost["finished"]) <= killed_at
        response = await again.request("GET", f"/jobs/{job['id']}/output")
        items = [json.loads(line) for line in response.body.decode().splitlines()]
        assert sorted((item["stream"], item["data"]) for item in items[:-1]) == [
            ("stderr", "two\n"), ("stdout", "one\n")]
        assert items[-1] == lost
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


@pytest.mark.gen_test(timeout=240)
async def test_finished_jobs_output_lives_in_the_store_not_in_memory(spawn_instance, tmp_path):
    # 50 jobs x 2 MiB: kept in memory, that is 100 MiB more; in the store, a few MiB.
    size = 2 << 20
    child = spawn_instance("--state-dir", str(tmp_path / "state"), "--max-output", str(size))
    script = f"import sys; sys.stdout.write('x' * {size})"

    async def one():
        job = await post_job(child, {"args": [PY, "-c", script]})
        while job["state"] in ("queued", "running"):
            await asyncio.sleep(0.05)
            _, job = await get_job(child, job["id"])
        assert job["stdout"] == "x" * size
        return job

    async def batch():  # five at a time: memory holds up to five running jobs' output
        return await asyncio.gather(*(one() for _ in range(5)))

    for _ in range(2):  # warm up: the heap and the output cache reach their working size
        await batch()
    before = rss_mib(child.proc.pid)
    jobs = []
    for _ in range(50 // 5):
        jobs += await batch()
    # The last outputs leave memory once the store has written them (and the heap is
    # trimmed): wait for that, within a deadline; kept in memory, they never would.
    settled = wait_until(lambda: rss_mib(child.proc.pid) - before < 25, 20)
    grown = rss_mib(child.proc.pid) - before
    assert settled, f"RSS grew {grown:.0f} MiB for 50 finished jobs"
    # And each one's output is still there, from the store.
    code, body = await get_job(child, jobs[0]["id"])
    assert code == 200 and body["stdout"] == "x" * size


@pytest.mark.gen_test(timeout=60)
async def test_a_shutdown_cancels_queued_jobs_unstarted_and_a_crash_leaves_them_lost(
        spawn_instance, tmp_path):
    state_dir = str(tmp_path / "state")
    marker = tmp_path / "ran"
    flags = ("--state-dir", state_dir, "--instance", "q", "--max-running", "1", "--grace", "0.3")
    child = spawn_instance(*flags)
    running = await post_job(child, {"args": ["sleep", "60"]})
    queued = await post_job(child, {"args": ["touch", str(marker)]})
    assert queued["state"] == "queued"
    child.signal(signal.SIGTERM)
    assert child.wait() == 0
    assert stored(state_dir) == {running["id"]: "cancelled", queued["id"]: "cancelled"}

    again = spawn_instance(*flags)
    _, body = await get_job(again, queued["id"])
    assert body["state"] == "cancelled" and body["status"] is None
    assert body["error"]["error"] == "shutting_down"
    # A job still queued when its instance dies is lost; it never ran.
    blocker = await post_job(again, {"args": ["sleep", "60"]})
    late = await post_job(again, {"args": ["touch", str(marker)]})
    assert late["state"] == "queued"
    assert wait_until(lambda: stored(state_dir).get(blocker["id"]) == "running", 10)
    again.signal(signal.SIGKILL)
    again.wait()
    third = spawn_instance(*flags)
    _, body = await get_job(third, late["id"])
    assert body["state"] == "lost" and body["status"] is None
    assert not marker.exists()


_SCHEMA_V1 = """CREATE TABLE jobs (id TEXT PRIMARY KEY, instance TEXT NOT NULL, state TEXT NOT NULL,
    args TEXT NOT NULL, status INTEGER, stdout TEXT NOT NULL, stderr TEXT NOT NULL,
    timed_out INTEGER NOT NULL, duration REAL, stdout_truncated INTEGER NOT NULL,
    stderr_truncated INTEGER NOT NULL, created REAL NOT NULL, finished REAL)"""


@pytest.mark.gen_test(timeout=60)
async def test_a_store_of_the_previous_version_keeps_its_jobs_and_their_output(
        spawn_instance, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)  # as earlier versions made it
    job_id = "old.AAAAAAAAAAAAAAAAAAAAAA"
    created = int(time.time()) - 10  # well within --job-ttl
    with contextlib.closing(sqlite3.connect(state_dir / "jobs.sqlite3")) as db, db:
        db.execute(_SCHEMA_V1)
        db.execute("INSERT INTO jobs VALUES (?, 'old', 'exited', '[\"sh\"]', 0, 'out\n', "
                   "'err\n', 0, 0.5, 0, 0, ?, ?)", (job_id, created, created + 0.5))
    child = spawn_instance("--state-dir", str(state_dir), "--instance", "old")
    code, body = await get_job(child, job_id)
    assert code == 200
    assert (body["state"], body["stdout"], body["stderr"]) == ("exited", "out\n", "err\n")
    assert parse_time(body["created"]) == created and body["error"] is None
    # Its own directory, which others could read: closed, not refused.
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    assert "readable by others (mode 0755), as earlier versions made it" in child.output()


@pytest.mark.gen_test(timeout=60)
async def test_the_store_refuses_creates_and_keeps_other_writes_until_the_disk_has_room(tmpfs):
    from helpers import sqlite_store

    from taskrunner.errors import StoreUnavailable
    from taskrunner.jobs.schema import JobRecord

    def record(job_id, state, finished=None):
        return JobRecord(id=job_id, instance="x", state=state, args=["true"], status=None,
                         timed_out=False, duration=None, stdout_truncated=False,
                         stderr_truncated=False, created=time.time(), finished=finished)

    store = sqlite_store(str(tmpfs / "state"), "x", retry_interval=0.1)
    written = []
    store.on_written = written.extend  # from the writer thread; read after flush()
    store.open()
    store.start()
    try:
        await store.create(record("x.a", "running"))
        filler = fill(tmpfs)
        with pytest.raises(StoreUnavailable):
            await store.create(record("x.b", "running"))
        store.put("x.a", record("x.a", "exited", time.time()), [(0, "stdout", b"out\n")])
        assert store.flush() is False and store.healthy is False
        assert store.write_failures >= 2 and written == []
        os.unlink(filler)
        assert wait_until(lambda: store.healthy, 10)
        assert store.flush() is True
        assert [(r.id, r.state) for r in written] == [("x.a", "exited")]
        assert stored(str(tmpfs / "state")) == {"x.a": "exited"}  # x.b never was
        assert stored_output(str(tmpfs / "state"), "x.a")["stdout"] == b"out\n"
    finally:
        store.close()


_SCHEMA_V2_JOBS = """CREATE TABLE jobs (id TEXT PRIMARY KEY, instance TEXT NOT NULL,
    state TEXT NOT NULL, args TEXT NOT NULL, status INTEGER, timed_out INTEGER NOT NULL,
    duration REAL, stdout_truncated INTEGER NOT NULL, stderr_truncated INTEGER NOT NULL,
    created REAL NOT NULL, finished REAL, error TEXT)"""


def test_a_version_2_store_gains_the_caller_column_and_keeps_its_jobs(tmp_path):
    from helpers import sqlite_store

    from taskrunner.jobs.schema import JobRecord

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    with contextlib.closing(sqlite3.connect(state_dir / "jobs.sqlite3")) as db, db:
        db.execute(_SCHEMA_V2_JOBS)
        db.execute("INSERT INTO jobs VALUES ('x.a', 'x', 'exited', '[\"true\"]', 0, 0, 0.1, 0, "
                   "0, 1.0, 1.1, NULL)")
        db.execute("PRAGMA user_version = 2")
    store = sqlite_store(str(state_dir), "x")
    store.open()
    store.start()
    try:
        [old] = store.load()
        assert (old.id, old.state, old.caller) == ("x.a", "exited", None)
        store.put("x.b", JobRecord(id="x.b", instance="x", state="exited", args=["true"],
                                   status=0, timed_out=False, duration=0.1,
                                   stdout_truncated=False, stderr_truncated=False,
                                   created=2.0, finished=2.1, caller="alice"))
        assert store.flush() is True
    finally:
        store.close()
    reopened = sqlite_store(str(state_dir), "x")
    reopened.open()
    try:
        assert {r.id: r.caller for r in reopened.load()} == {"x.a": None, "x.b": "alice"}
    finally:
        reopened.close()


_SCHEMA_V3 = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, instance TEXT NOT NULL, state TEXT NOT NULL,
    args TEXT NOT NULL, status INTEGER, timed_out INTEGER NOT NULL,
    oom_killed INTEGER NOT NULL DEFAULT 0, duration REAL, stdout_truncated INTEGER NOT NULL,
    stderr_truncated INTEGER NOT NULL, created REAL NOT NULL, finished REAL, error TEXT,
    caller TEXT, callback_url TEXT, callback TEXT);
CREATE TABLE chunks (job TEXT NOT NULL, seq INTEGER NOT NULL, stream INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (job, seq)) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""


@pytest.mark.gen_test(timeout=60)
async def test_a_version_3_store_keeps_its_last_heartbeat_as_the_end_of_its_lost_job(
        spawn_instance, tmp_path):
    # Version 3 had one heartbeat for its one instance; version 4 keeps one per instance.
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    with contextlib.closing(sqlite3.connect(state_dir / "jobs.sqlite3")) as db, db:
        db.executescript(_SCHEMA_V3)
        now = time.time()
        db.execute("INSERT INTO jobs VALUES ('old.AAAAAAAAAAAAAAAAAAAAAA', 'old', 'running', "
                   "'[\"sleep\", \"9\"]', NULL, 0, 0, NULL, 0, 0, ?, NULL, NULL, "
                   "NULL, NULL, NULL)", (now - 60,))
        db.execute("INSERT INTO meta VALUES ('heartbeat', ?)", (now - 30,))
        db.execute("PRAGMA user_version = 3")
    child = spawn_instance("--state-dir", str(state_dir), "--instance", "old")
    code, job = await get_job(child, "old.AAAAAAAAAAAAAAAAAAAAAA")
    assert code == 200, job
    assert job["state"] == "lost"
    assert abs(parse_time(job["finished"]) - (now - 30)) < 0.01
    with contextlib.closing(sqlite3.connect(state_dir / "jobs.sqlite3")) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert "meta" not in tables and "instances" in tables
        assert db.execute("PRAGMA user_version").fetchone()[0] == 6


def test_an_instance_opening_a_store_a_sibling_is_creating_waits_for_it(tmp_path):
    # The stack's instances start at once on a store none of them has made yet: while one
    # still writes the new file (no WAL yet), turning it to WAL is refused at once, busy
    # timeout or not. Opening waits for the sibling instead of stopping the instance.
    from helpers import sqlite_store

    path = tmp_path / "jobs.sqlite3"
    sibling = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    sibling.execute("BEGIN IMMEDIATE")
    sibling.execute("CREATE TABLE early (a)")
    release = threading.Timer(0.5, sibling.execute, ["COMMIT"])
    release.start()
    store = sqlite_store(str(tmp_path), "late")
    started = time.monotonic()
    try:
        store.open()
        assert time.monotonic() - started >= 0.4  # it did have to wait
    finally:
        release.join()
        store.close()
        sibling.close()

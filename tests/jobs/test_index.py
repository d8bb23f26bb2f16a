"""The job index shared by instances: one SQLite file for one host's instances, or a
PostgreSQL database for a cluster's (each test runs on both, as real child instances and a
real PostgreSQL server).

What a user sees: any instance lists every instance's jobs, pages and filters them, and
answers for a finished job of another; an instance that dies has its unfinished jobs
reported lost by the others, and lost they stay when it comes back.
"""

import asyncio
import json
import signal
import time

import pytest
from helpers import get_job, submit, until, wait_done

LOST_AFTER = 3


def start_pair(spawn_instance, shared_index):
    a = spawn_instance("--instance", "a", "--lost-after", str(LOST_AFTER), *shared_index)
    b = spawn_instance("--instance", "b", "--lost-after", str(LOST_AFTER), *shared_index)
    return a, b


async def listing(instance, query=""):
    response = await instance.request("GET", f"/jobs{query}")
    assert response.code == 200, response.body
    return json.loads(response.body)


@pytest.mark.gen_test(timeout=60)
async def test_any_instance_lists_every_instances_jobs_and_shows_a_finished_one(
        spawn_instance, shared_index):
    a, b = start_pair(spawn_instance, shared_index)
    on_a = [await submit(a, {"args": ["echo", f"from a {n}"]}) for n in range(3)]
    on_b = [await submit(b, {"args": ["echo", f"from b {n}"]}) for n in range(2)]
    for job in on_a:
        await wait_done(a, job["id"])
    for job in on_b:
        await wait_done(b, job["id"])
    everyone = sorted(job["id"] for job in on_a + on_b)

    async def both_list_all():
        pages = [await listing(instance) for instance in (a, b)]
        return all(sorted(job["id"] for job in page["jobs"]) == everyone for page in pages)

    await until(both_list_all, 10)
    only_a = await listing(b, "?instance=a")
    assert sorted(job["id"] for job in only_a["jobs"]) == sorted(job["id"] for job in on_a)
    assert {job["state"] for job in (await listing(b, "?state=exited"))["jobs"]} == {"exited"}
    # A finished job of a, asked of b: answered from the index, its output included.
    shown = await get_job(b, on_a[1]["id"])
    assert (shown["instance"], shown["state"], shown["stdout"]) == ("a", "exited", "from a 1\n")
    response = await b.request("GET", f"/jobs/{on_a[1]['id']}/output")
    lines = [json.loads(line) for line in response.body.splitlines()]
    assert lines[0] == {"stream": "stdout", "data": "from a 1\n"}
    assert lines[-1]["state"] == "exited"


@pytest.mark.gen_test(timeout=90)
async def test_a_dead_owners_running_job_turns_lost_everywhere_and_stays_lost(
        spawn_instance, shared_index):
    a, b = start_pair(spawn_instance, shared_index)
    job = await submit(a, {"args": ["sleep", "600"]})
    job_id = job["id"]
    await until(lambda: get_job(b, job_id), 10)
    assert (await get_job(b, job_id))["state"] == "running"
    # A power cut of a: no drain, no last write.
    a.signal(signal.SIGKILL)
    a.wait()
    killed = time.monotonic()
    # Only the owner has the live output and can cancel, and it cannot be asked (b would
    # forward to a live one): b says so, at once.
    for method, path in (("GET", f"/jobs/{job_id}/output"), ("DELETE", f"/jobs/{job_id}")):
        response = await b.request(method, path)
        assert response.code == 503, response.body
        assert json.loads(response.body)["error"] == "owner_unreachable"
        assert response.headers["Retry-After"] == "5"

    async def lost_on_b():
        seen = await get_job(b, job_id)
        return seen["state"] == "lost"

    await until(lost_on_b, LOST_AFTER + 8)
    assert time.monotonic() - killed >= LOST_AFTER - 1
    listed = await listing(b, "?state=lost")
    assert [entry["id"] for entry in listed["jobs"]] == [job_id]
    assert (await listing(b, "?state=running"))["jobs"] == []
    # a comes back under its name: it marks the job lost for good; lost it stays.
    again = spawn_instance("--instance", "a", "--lost-after", str(LOST_AFTER), *shared_index)
    assert (await get_job(again, job_id))["state"] == "lost"
    await asyncio.sleep(1.5)
    assert (await get_job(b, job_id))["state"] == "lost"


@pytest.mark.gen_test(timeout=60)
async def test_a_sibling_restarting_takes_no_running_job_of_another_for_lost(
        spawn_instance, shared_index):
    a, b = start_pair(spawn_instance, shared_index)
    job = await submit(a, {"args": ["sleep", "600"]})
    b.signal(signal.SIGTERM)
    assert b.wait() == 0
    again = spawn_instance("--instance", "b", "--lost-after", str(LOST_AFTER), *shared_index)
    assert (await get_job(again, job["id"]))["state"] == "running"
    assert (await get_job(a, job["id"]))["state"] == "running"


def seed(store_flags, count, args=("true",)):
    """``count`` finished and running jobs of two instances, written straight to the index
    through its own store (as instances write them); returns their records."""
    from taskrunner.jobs.job import new_job_id
    from taskrunner.jobs.schema import JobRecord

    store = index_store(store_flags, "seeder")
    store.open()
    store.start()
    records = []
    try:
        for n in range(count):
            owner = ("s1", "s2")[n % 2]
            state = ("exited", "failed", "running")[n % 3]
            created = 1_700_000_000.0 + n // 2  # pairs share a time: the id breaks the tie
            record = JobRecord(
                id=new_job_id(owner), instance=owner, state=state, args=list(args),
                status=0 if state == "exited" else None, timed_out=False,
                duration=0.5 if state == "exited" else None, stdout_truncated=False,
                stderr_truncated=False, created=created,
                finished=None if state == "running" else created + 1,
                error={"error": "spawn_failed", "message": "no such program"}
                if state == "failed" else None)
            store.put(record.id, record)
            records.append(record)
        assert store.flush(30)
    finally:
        store.close()
    return records


def index_store(flags, instance):
    from taskrunner.jobs.store import JobStore

    kind, where = flags
    if kind == "--state-dir":
        from taskrunner.jobs.backends.sqlite import SQLiteIndex

        return JobStore(SQLiteIndex(where), instance)
    from taskrunner.jobs.backends.postgresql import PostgresIndex

    with open(where) as file:  # --state-url-file
        return JobStore(PostgresIndex(file.read().strip()), instance)


@pytest.mark.gen_test(timeout=120)
async def test_pages_and_filters_over_thousands_of_jobs(spawn_instance, shared_index):
    reader = spawn_instance("--instance", "r", *shared_index)
    records = seed(shared_index, 3000)
    newest_first = sorted(records, key=lambda r: (r.created, r.id), reverse=True)

    async def walk(query):
        seen, before = [], None
        while True:
            page = await listing(reader, query + (f"&before={before}" if before else ""))
            assert len(page["jobs"]) <= 400
            seen += page["jobs"]
            before = page["next"]
            if before is None:
                return seen

    everything = await walk("?limit=400")
    assert [job["id"] for job in everything] == [r.id for r in newest_first]
    wanted = [r.id for r in newest_first if r.instance == "s1" and r.state == "failed"]
    assert [job["id"] for job in await walk("?limit=400&instance=s1&state=failed")] == wanted
    first = await listing(reader)
    assert len(first["jobs"]) == 100 and first["next"]
    for bad in ("?limit=0", "?limit=1001", "?limit=x", "?state=done", "?before=nonsense"):
        response = await reader.request("GET", f"/jobs{bad}")
        assert response.code == 400, bad
        assert json.loads(response.body)["error"] == "invalid_field"


@pytest.mark.gen_test(timeout=120)
async def test_a_listing_carries_a_few_kib_of_each_jobs_args(spawn_instance, shared_index):
    # 150 jobs of 0.5 MB args once made a listing of 76.5 MB. Both kinds of job: one of the
    # instance asked (its own, from memory) and others' read from the index.
    big = [f"{n}" * 100_000 for n in range(5)]  # 0.5 MB, in args the kernel accepts
    reader = spawn_instance("--instance", "r", *shared_index)
    seeded = seed(shared_index, 150, ["printf", *big])
    own = await submit(reader, {"args": ["printf", "%.0s", *big]})
    small = await submit(reader, {"args": ["echo", "small"]})
    await wait_done(reader, own["id"])
    response = await reader.request("GET", "/jobs?limit=1000")
    assert response.code == 200
    assert len(response.body) < 152 * 6 * 1024, len(response.body)  # was 76 MB
    jobs = {job["id"]: job for job in json.loads(response.body)["jobs"]}
    assert len(jobs) == 152
    assert (jobs[small["id"]]["args"], jobs[small["id"]]["args_truncated"]) == (
        ["echo", "small"], False)
    for job_id in (own["id"], seeded[0].id, seeded[-1].id):
        listed = jobs[job_id]
        whole = await get_job(reader, job_id)  # one job: its args whole
        assert whole["args"][-len(big):] == big and "args_truncated" not in whole
        assert listed["args_truncated"] is True
        assert listed["args"][0] == "printf" and max(map(len, listed["args"])) == 256
        assert all(len(arg) <= 256 and whole["args"][i].startswith(arg)
                   for i, arg in enumerate(listed["args"]))
        assert sum(map(len, listed["args"])) <= 4096
    # The index itself is read no further than a summary needs (its SELECT cuts the args).
    from taskrunner.jobs.index import LISTED_ARGS_HEAD, JobQuery

    store = index_store(shared_index, "probe")
    store.open()
    try:
        records = await store.find(JobQuery(instance="s1", limit=5))
    finally:
        await store.close_reads()
        store.close()
    assert len(records) == 5
    # Each a head of 0.5 MB of args: its JSON, closed again with '"]'.
    assert [len(json.dumps(record.args)) for record in records] == [LISTED_ARGS_HEAD + 2] * 5


def test_a_second_live_process_cannot_take_an_instances_name(spawn_instance, shared_index):
    import subprocess

    from helpers import PY, REPO

    first = spawn_instance("--instance", "twin", *shared_index)
    second = subprocess.run([PY, "-m", "taskrunner", "--port", "0", "--instance", "twin",
                             *shared_index], cwd=REPO, capture_output=True, text=True,
                            timeout=30)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "instance name 'twin' is in use" in lines[0], second.stderr
    assert first.proc.poll() is None
    # Once the first stops cleanly, the name is free at once.
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    spawn_instance("--instance", "twin", *shared_index)


def test_the_index_role_is_no_superuser_and_logs_in_with_its_password_only(postgres,
                                                                           state_url):
    import psycopg

    # The password comes from the server's PGPASSFILE (as libpq reads it): not in the URL.
    with psycopg.connect(state_url) as conn:
        row = conn.execute("SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, "
                           "rolbypassrls FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == (False, False, False, False, False)
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database "
                             "WHERE datname = current_database()").fetchone()
        assert owner == ("taskrunner",)
    host = state_url.split("@", 1)[1].rsplit("/", 1)[0]
    refused = {
        "another database": state_url.rsplit("/", 1)[0] + "/postgres",
        "no password": state_url + "?passfile=/dev/null",
        "the superuser over TCP": f"postgresql://postgres@{host}/postgres",
    }
    for why, url in refused.items():
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=5).close()
            pytest.fail(f"{why}: connected")

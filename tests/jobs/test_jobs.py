import asyncio
import json
import re
import signal
import time

import pytest
from conftest import with_config
from helpers import (
    PY,
    get_job,
    group_alive,
    pid_alive,
    submit,
    wait_done,
    wait_for,
    wait_gone,
    wait_until,
)

from taskrunner.web.peers import default_name


@pytest.mark.gen_test
async def test_post_runs_a_job_in_the_background_and_get_shows_how_it_ended(instance, tmp_path):
    gate = tmp_path / "go"
    args = ["sh", "-c", f"{wait_for(gate)}; echo out; echo err >&2; exit 3"]
    # Answered while the command waits for a gate only we open: at once, not at its end.
    job = await submit(instance, {"args": args})
    assert job["state"] == "running"
    assert job["status"] is None and job["finished"] is None and job["duration"] is None
    assert job["args"] == args
    assert job["instance"] == default_name(instance.port)  # <host name>-<port>
    gate.touch()
    done = await wait_done(instance, job["id"])
    assert done["state"] == "exited"
    assert done["status"] == 3
    assert (done["stdout"], done["stderr"]) == ("out\n", "err\n")
    assert done["timed_out"] is False and done["duration"] > 0
    assert done["created"] == job["created"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", done["finished"])
    assert done["finished"] >= done["created"]


@pytest.mark.gen_test
async def test_job_ids_are_instance_dot_128_random_bits(instance):
    ids = {(await submit(instance, {"args": ["true"]}))["id"] for _ in range(5)}
    assert len(ids) == 5
    for job_id in ids:
        name = re.escape(default_name(instance.port))
        assert re.fullmatch(rf"{name}\.[A-Za-z0-9_-]{{22}}", job_id), job_id
    health = json.loads((await instance.request("GET", "/healthz")).body)
    assert health["instance"] == default_name(instance.port)


@with_config(instance="alpha-1")
@pytest.mark.gen_test
async def test_instance_flag_names_the_id_prefix(instance):
    job = await submit(instance, {"args": ["true"]})
    assert job["id"].startswith("alpha-1.") and job["instance"] == "alpha-1"
    health = json.loads((await instance.request("GET", "/healthz")).body)
    assert health["instance"] == "alpha-1"


@pytest.mark.gen_test
async def test_timed_out_job(instance):
    job = await submit(instance, {"args": ["sleep", "10"], "timeout": 0.3})
    done = await wait_done(instance, job["id"])
    assert done["state"] == "timed_out"
    assert done["status"] == -signal.SIGKILL and done["timed_out"] is True


@pytest.mark.gen_test
async def test_delete_kills_the_whole_group_and_answers_once_reaped(instance):
    job = await submit(instance, {"args": ["sh", "-c", "sleep 100 & echo $!; wait"]})
    pgid = instance.ctx.jobs.get(job["id"]).command.pid
    deadline = time.monotonic() + 5
    while not (await get_job(instance, job["id"]))["stdout"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    grandchild = int((await get_job(instance, job["id"]))["stdout"])
    assert pid_alive(grandchild) and group_alive(pgid)

    response = await instance.request("DELETE", f"/jobs/{job['id']}")
    assert response.code == 200
    cancelled = json.loads(response.body)
    assert cancelled["state"] == "cancelled" and cancelled["status"] == -9
    assert cancelled["finished"] is not None
    assert not pid_alive(pgid)
    assert wait_until(lambda: not pid_alive(grandchild), 2.0)
    assert await get_job(instance, job["id"]) == cancelled


@pytest.mark.gen_test
async def test_delete_on_an_ended_job_changes_nothing(instance):
    job = await submit(instance, {"args": ["sh", "-c", "echo hi"]})
    done = await wait_done(instance, job["id"])
    response = await instance.request("DELETE", f"/jobs/{job['id']}")
    assert response.code == 200
    assert json.loads(response.body) == done
    assert done["state"] == "exited" and done["status"] == 0


@pytest.mark.gen_test
async def test_unknown_id_is_a_404_on_every_job_route(instance):
    for method, path in [("GET", "/jobs/{}"), ("DELETE", "/jobs/{}"), ("GET", "/jobs/{}/output")]:
        for job_id in (f"{instance.port}.nosuchjob", "x", "%2e%2e"):
            response = await instance.request(method, path.format(job_id))
            assert response.code == 404, (method, path, job_id)
            body = json.loads(response.body)
            assert body["error"] == "job_not_found"
            assert response.headers["Content-Type"] == "application/json"


@pytest.mark.gen_test
async def test_post_jobs_validates_like_run(instance):
    cases = [
        (b"{", 400, "invalid_json"),
        (json.dumps({"args": ["true"], "timout": 1}).encode(), 400, "unknown_field"),
        (json.dumps({"args": []}).encode(), 400, "invalid_field"),
        (json.dumps({"args": ["/no/such/program"]}).encode(), 422, "spawn_failed"),
        (json.dumps({"args": ["true"], "stdin": "x" * (2 << 20)}).encode(), 413, "body_too_large"),
    ]
    for raw, code, error in cases:
        response = await instance.request("POST", "/jobs", raw=raw)
        assert response.code == code, (raw[:40], response.body)
        assert json.loads(response.body)["error"] == error
    listing = json.loads((await instance.request("GET", "/jobs")).body)
    assert listing == {"jobs": [], "next": None}  # nothing that failed to start is kept
    response = await instance.request("PUT", "/jobs", {"args": ["true"]})
    assert response.code == 405


@pytest.mark.gen_test
async def test_list_is_newest_first_without_output(instance):
    first = await submit(instance, {"args": ["echo", "one"]})
    second = await submit(instance, {"args": ["sleep", "5"]})
    response = await instance.request("GET", "/jobs")
    assert response.code == 200
    jobs = json.loads(response.body)["jobs"]
    assert [job["id"] for job in jobs] == [second["id"], first["id"]]
    assert jobs[0]["state"] == "running"
    assert "stdout" not in jobs[0]



@pytest.mark.gen_test(timeout=60)
async def test_without_a_store_the_pages_hold_every_job_once(instance):
    # The in-memory listing (no --state-dir): each page starts right after the cursor, so
    # no job repeats at a page boundary and none is skipped.
    jobs = [await submit(instance, {"args": ["true"]}) for _ in range(23)]
    for job in jobs:
        await wait_done(instance, job["id"])
    for query in ("", "&state=exited", f"&instance={jobs[0]['instance']}"):
        seen, before, pages = [], None, 0
        while True:
            after = f"&before={before}" if before else ""
            response = await instance.request("GET", f"/jobs?limit=4{query}{after}")
            assert response.code == 200, response.body
            page = json.loads(response.body)
            assert 0 < len(page["jobs"]) <= 4
            seen += [job["id"] for job in page["jobs"]]
            pages += 1
            before = page["next"]
            if before is None:
                break
        assert seen == [job["id"] for job in reversed(jobs)], query
        assert pages == 6
    for query in ("state=running", "instance=another"):
        response = await instance.request("GET", f"/jobs?{query}")
        assert json.loads(response.body) == {"jobs": [], "next": None}, query

@pytest.mark.gen_test
async def test_a_listing_cuts_args_to_a_few_kib_and_the_job_has_them_whole(instance):
    many = ["x" * 300, *(f"{n}" * 100 for n in range(100))]  # too long, then too many
    job = await submit(instance, {"args": ["printf", "%.0s", *many]})
    await wait_done(instance, job["id"])
    response = await instance.request("GET", "/jobs")
    (listed,) = json.loads(response.body)["jobs"]
    assert len(response.body) < 6 * 1024
    assert listed["args_truncated"] is True
    assert listed["args"][:3] == ["printf", "%.0s", "x" * 256]
    assert len(listed["args"]) <= 64 and sum(map(len, listed["args"])) <= 4096
    assert (await get_job(instance, job["id"]))["args"] == ["printf", "%.0s", *many]


@pytest.mark.gen_test
async def test_stdin_env_cwd_reach_a_job(instance, tmp_path):
    job = await submit(instance, {"args": ["sh", "-c", "cat; echo $FOO; pwd"], "stdin": "in\n",
                                  "env": {"FOO": "bar"}, "cwd": str(tmp_path)})
    done = await wait_done(instance, job["id"])
    assert done["stdout"] == f"in\nbar\n{tmp_path}\n"


@with_config(job_ttl=0.5)
@pytest.mark.gen_test(timeout=30)
async def test_finished_jobs_expire_after_the_ttl(instance, tmp_path):
    gate = tmp_path / "go"
    running = await submit(instance, {"args": ["sh", "-c", wait_for(gate)]})
    job = await submit(instance, {"args": ["true"]})
    await wait_done(instance, job["id"])
    await wait_gone(instance, job["id"])
    # A running job never expires, however long it runs; it is kept for the ttl once it ends.
    assert (await get_job(instance, running["id"]))["state"] == "running"
    gate.touch()
    await wait_done(instance, running["id"])
    await wait_gone(instance, running["id"])
    assert json.loads((await instance.request("GET", "/jobs")).body) == {"jobs": [], "next": None}


@with_config(max_jobs=3)
@pytest.mark.gen_test(timeout=30)
async def test_max_jobs_drops_the_oldest_finished_first(instance, tmp_path):
    long = await submit(instance, {"args": ["sleep", "5"]})  # oldest, but running
    a = await submit(instance, {"args": ["sh", "-c", wait_for(tmp_path / "go")]})
    b = await submit(instance, {"args": ["true"]})
    await wait_done(instance, b["id"])
    (tmp_path / "go").touch()
    await wait_done(instance, a["id"])  # b finished first, so b is the oldest finished
    c = await submit(instance, {"args": ["true"]})
    ids = [job["id"] for job in json.loads((await instance.request("GET", "/jobs")).body)["jobs"]]
    assert ids == [c["id"], a["id"], long["id"]]
    assert (await instance.request("GET", f"/jobs/{b['id']}")).code == 404


@with_config(max_jobs=2)
@pytest.mark.gen_test
async def test_when_every_slot_holds_a_running_job_post_is_a_429(instance):
    await submit(instance, {"args": ["sleep", "5"]})
    await submit(instance, {"args": ["sleep", "5"]})
    response = await instance.request("POST", "/jobs", {"args": ["true"]})
    assert response.code == 429
    assert json.loads(response.body)["error"] == "too_many_requests"
    assert instance.ctx.engine.running == 2


@with_config(max_output=10)
@pytest.mark.gen_test
async def test_output_kept_per_job_is_bounded_by_max_output(instance):
    job = await submit(instance, {"args": [PY, "-c", "print('x' * 100000)"]})
    done = await wait_done(instance, job["id"])
    assert done["stdout"] == "x" * 10 and done["stdout_truncated"] is True
    kept = instance.ctx.jobs.get(job["id"])
    assert kept.output.size == 10
    stream = await instance.request("GET", f"/jobs/{job['id']}/output")
    lines = [json.loads(line) for line in stream.body.decode().splitlines()]
    assert "".join(item["data"] for item in lines[:-1]) == "x" * 10



@pytest.mark.parametrize("flags", [["--instance", "a.b"], ["--instance", "a/b"],
                                   ["--job-ttl", "0"], ["--max-jobs", "0"]])
def test_bad_job_flags_are_refused(flags, capsys):
    from taskrunner.cli import parse_config

    with pytest.raises(SystemExit) as exit_info:
        parse_config(flags)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_job_flags_and_their_defaults():
    from taskrunner.cli import parse_config

    config = parse_config([])
    assert (config.instance, config.job_ttl, config.max_jobs, config.state_dir) == (
        "", 3600.0, 1000, "")
    config = parse_config(["--instance", "web-2", "--job-ttl", "60", "--max-jobs", "5",
                           "--state-dir", "/tmp/x"])
    assert (config.instance, config.job_ttl, config.max_jobs, config.state_dir) == (
        "web-2", 60.0, 5, "/tmp/x")


# -- queued jobs: accepted or refused at once ----------------------------------------------


@with_config(max_running=1, max_queued=2)
@pytest.mark.gen_test(timeout=30)
async def test_with_every_slot_busy_a_job_is_queued_at_once_and_starts_when_one_frees(
        instance, tmp_path):
    gate, order = tmp_path / "go", tmp_path / "order"
    blocker = await submit(instance, {"args": [
        "sh", "-c", f"{wait_for(gate)}; echo blocker >> {order}"]})
    assert blocker["state"] == "running"
    # Answered while the blocker holds the only slot (it waits for the gate we hold).
    queued = await submit(instance, {"args": ["sh", "-c", f"echo queued >> {order}; echo hi"]})
    assert queued["state"] == "queued"
    assert (queued["status"], queued["finished"], queued["error"]) == (None, None, None)
    assert (await get_job(instance, queued["id"]))["state"] == "queued"
    listing = json.loads((await instance.request("GET", "/jobs")).body)["jobs"]
    assert [job["state"] for job in listing] == ["queued", "running"]
    assert not order.exists()

    gate.touch()
    done = await wait_done(instance, queued["id"])
    assert done["state"] == "exited" and done["stdout"] == "hi\n"
    assert order.read_text() == "blocker\nqueued\n"
    assert instance.ctx.launcher.admission.running == 0


@with_config(max_running=1, max_queued=2)
@pytest.mark.gen_test(timeout=30)
async def test_delete_cancels_a_queued_job_without_ever_starting_it(instance, tmp_path):
    gate, marker = tmp_path / "go", tmp_path / "ran"
    blocker = await submit(instance, {"args": ["sh", "-c", wait_for(gate)]})
    queued = await submit(instance, {"args": ["touch", str(marker)]})
    after = await submit(instance, {"args": ["echo", "after"]})
    assert (queued["state"], after["state"]) == ("queued", "queued")

    response = await instance.request("DELETE", f"/jobs/{queued['id']}")
    assert response.code == 200
    cancelled = json.loads(response.body)
    assert cancelled["state"] == "cancelled" and cancelled["status"] is None
    assert cancelled["finished"] is not None and cancelled["duration"] is None
    assert await get_job(instance, queued["id"]) == cancelled

    gate.touch()
    await wait_done(instance, blocker["id"])
    # The next in line got the slot; the cancelled one never ran.
    assert (await wait_done(instance, after["id"]))["stdout"] == "after\n"
    assert not marker.exists()
    assert await get_job(instance, queued["id"]) == cancelled
    assert instance.ctx.launcher.admission.running == 0


@with_config(max_running=1, max_queued=1)
@pytest.mark.gen_test(timeout=30)
async def test_no_free_slot_and_no_queue_room_is_a_429_at_once(instance, tmp_path):
    gate, marker = tmp_path / "go", tmp_path / "ran"
    await submit(instance, {"args": ["sh", "-c", wait_for(gate)]})
    queued = await submit(instance, {"args": ["true"]})
    assert queued["state"] == "queued"
    for path in ("/jobs", "/run"):
        response = await instance.request("POST", path, {"args": ["touch", str(marker)]})
        assert response.code == 429, (path, response.body)
        assert response.headers["Retry-After"] == "1"
        assert json.loads(response.body)["error"] == "too_many_requests"
    listing = json.loads((await instance.request("GET", "/jobs")).body)["jobs"]
    assert len(listing) == 2
    gate.touch()
    assert (await wait_done(instance, queued["id"]))["state"] == "exited"
    assert not marker.exists()


@with_config(max_running=1, max_queued=1)
@pytest.mark.gen_test(timeout=30)
async def test_a_queued_job_that_cannot_start_when_its_turn_comes_fails(instance, tmp_path):
    gate, program = tmp_path / "go", tmp_path / "program"
    program.write_text("#!/bin/sh\necho never\n")
    program.chmod(0o755)
    blocker = await submit(instance, {"args": ["sh", "-c", wait_for(gate)]})
    queued = await submit(instance, {"args": [str(program)]})
    assert queued["state"] == "queued"  # the program was there when it was accepted
    program.unlink()
    gate.touch()
    await wait_done(instance, blocker["id"])
    failed = await wait_done(instance, queued["id"])
    assert failed["state"] == "failed" and failed["status"] is None
    assert failed["error"]["error"] == "spawn_failed" and str(program) in failed["error"]["message"]
    assert failed["stdout"] == ""
    assert instance.ctx.launcher.admission.running == 0


@with_config(max_running=1, max_queued=1)
@pytest.mark.gen_test(timeout=30)
async def test_a_program_that_cannot_start_is_refused_at_once_even_when_it_would_queue(
        instance, tmp_path):
    gate = tmp_path / "go"
    await submit(instance, {"args": ["sh", "-c", wait_for(gate)]})
    response = await instance.request("POST", "/jobs", {"args": ["/no/such/program"]})
    assert response.code == 422 and json.loads(response.body)["error"] == "spawn_failed"
    assert instance.ctx.launcher.admission.queued == 0
    gate.touch()

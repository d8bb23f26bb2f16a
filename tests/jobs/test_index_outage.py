"""The PostgreSQL job index stopped and started again under two real instances: /run goes on,
new jobs are refused (503, Retry-After) and start nothing, the jobs already running finish
and their results reach the index once it is back, and each instance logs the outage once.
"""

import asyncio
import json
import re

import pytest
from helpers import get_job, submit, until, wait_done


@pytest.mark.gen_test(timeout=120)
async def test_the_index_going_away_loses_no_result_and_stops_no_run(
        spawn_instance, postgres, state_url):
    a = spawn_instance("--instance", "a", "--state-url", state_url)
    b = spawn_instance("--instance", "b", "--state-url", state_url)
    # Finishes while the index is down: its result must reach the index afterwards.
    job = await submit(a, {"args": ["sh", "-c", "sleep 2; echo finished in the dark"]})
    postgres.stop(immediate=True)
    try:
        for _ in range(5):
            response = await a.request("POST", "/run", {"args": ["echo", "still here"]})
            assert (response.code, json.loads(response.body)["stdout"]) == (200, "still here\n")
        for instance in (a, b):
            response = await instance.request("POST", "/jobs", {"args": ["touch", "/never"]})
            assert response.code == 503, response.body
            assert json.loads(response.body)["error"] == "store_unavailable"
            assert response.headers["Retry-After"] == "5"
        listing = await b.request("GET", "/jobs")
        assert listing.code == 503
        assert json.loads(listing.body)["error"] == "store_unavailable"
        done = await wait_done(a, job["id"])  # the owner knows, from memory
        assert done["stdout"] == "finished in the dark\n"
        health = json.loads((await a.request("GET", "/healthz")).body)
        assert health["status"] == "degraded" and health["job_store"]["ok"] is False
        await asyncio.sleep(3)  # several failed retries
    finally:
        postgres.start()

    async def b_sees_the_result():
        response = await b.request("GET", f"/jobs/{job['id']}")
        return response.code == 200 and json.loads(response.body)["state"] == "exited"

    await until(b_sees_the_result, 20)
    shown = await get_job(b, job["id"])
    assert shown["stdout"] == "finished in the dark\n"
    new = await submit(b, {"args": ["true"]})
    await wait_done(b, new["id"])
    for instance in (a, b):
        log = instance.output()
        assert len(re.findall(r"job store: writing .* failed", log)) == 1, log
        assert len(re.findall(r"job store: writes to .* succeed again", log)) == 1, log

import json
import os

import pytest
from helpers import submit, wait_done, wait_for, wait_until

from taskrunner import __version__

TOKEN = "healthz-token-0123456789"


@pytest.mark.gen_test
async def test_healthz_reports_port_pid_running_and_version(instance):
    response = await instance.request("GET", "/healthz")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.body)
    assert body == {"status": "ok", "port": instance.port, "pid": os.getpid(),
                    "running": 0, "queued": 0, "finished": 0, "version": __version__,
                    "instance": str(instance.port)}


@pytest.fixture
def child(spawn_instance, tmp_path):
    """A real instance with a token (a child process, so its pid is not the test's)."""
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return spawn_instance("--token-file", str(path))


@pytest.mark.gen_test
async def test_with_a_token_a_stranger_learns_the_status_only(child):
    for header in (None, "Bearer not-the-token", f"Basic {TOKEN}", "Bearer", TOKEN):
        response = await child.request("GET", "/healthz",
                                       headers={"Authorization": header} if header else None)
        # Still public: a probe needs no token, and a wrong one is no 401.
        assert response.code == 200, header
        assert json.loads(response.body) == {"status": "ok"}, header
        assert response.headers["Vary"] == "Authorization"


@pytest.mark.gen_test
async def test_with_a_token_its_holder_gets_the_whole_answer(child):
    response = await child.request("GET", "/healthz",
                                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert json.loads(response.body) == {
        "status": "ok", "port": child.port, "pid": child.proc.pid, "running": 0,
        "queued": 0, "finished": 0, "version": __version__, "instance": str(child.port)}
    assert wait_until(lambda: "GET /healthz 200" in child.output())
    assert " caller=token " in child.output()  # the access log names who read it


@pytest.mark.gen_test(timeout=30)
async def test_healthz_counts_running_queued_and_finished_commands(spawn_instance, tmp_path):
    # What the page charts for any caller: commands running and waiting now, and how many
    # ended since start (two answers make completions per second).
    child = spawn_instance("--max-running", "1")

    async def health():
        return json.loads((await child.request("GET", "/healthz")).body)

    gate = tmp_path / "gate"
    first = await submit(child, {"args": ["sh", "-c", wait_for(gate)]})
    second = await submit(child, {"args": ["true"]})
    body = await health()
    assert (body["running"], body["queued"], body["finished"]) == (1, 1, 0)
    gate.touch()
    await wait_done(child, first["id"])
    await wait_done(child, second["id"])
    body = await health()
    assert (body["running"], body["queued"], body["finished"]) == (0, 0, 2)

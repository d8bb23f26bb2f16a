"""Jobs through nginx: created anywhere, then polled, streamed and cancelled on the instance
that owns them (nginx routes /jobs/<instance>.<random> by its instance part).

Ports 18280 and 19085-19088.
"""

import http.client
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time

import pytest
from helpers import wait_until
from stackutil import needs_stack, running_stack

pytestmark = needs_stack()


@pytest.fixture(scope="module")
def stack():
    # Under a directory anyone may enter (not pytest's, which only root may), made by the
    # stack itself: only its own modes keep other users out.
    base = tempfile.mkdtemp(prefix="taskrunner-stack-")
    try:
        os.chmod(base, 0o755)
        run_dir = os.path.join(base, "run")
        with running_stack(run_dir, 18280, 19085) as stack:  # state: run_dir/state, shared
            yield stack
    finally:
        shutil.rmtree(base)


def create(stack, args):
    status, headers, body = stack.call("POST", "/jobs", {"args": args})
    assert status == 202, body
    job = json.loads(body)
    assert headers["Location"] == f"/jobs/{job['id']}"
    return job


def test_jobs_created_through_nginx_can_be_polled_on_their_instance(stack):
    jobs = [create(stack, ["echo", str(i)]) for i in range(8)]
    owners = {job["id"].split(".", 1)[0] for job in jobs}
    assert owners <= {str(port) for port in stack.ports}
    assert len(owners) >= 2  # the POSTs were spread over the instances
    for i, job in enumerate(jobs):
        deadline = time.monotonic() + 10
        while True:
            status, _, body = stack.call("GET", f"/jobs/{job['id']}")
            assert status == 200, body
            polled = json.loads(body)
            if polled["state"] != "running" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert polled["state"] == "exited"
        assert polled["stdout"] == f"{i}\n"


def test_one_get_jobs_lists_the_jobs_of_all_four(stack):
    # The four share one job index (scripts/stack's --state-dir): whichever instance nginx
    # asks lists every job of the stack.
    jobs = [create(stack, ["echo", str(i)]) for i in range(8)]
    assert len({job["id"].split(".", 1)[0] for job in jobs}) >= 2
    for _ in range(4):  # nginx asks each instance in turn
        status, _, body = stack.call("GET", "/jobs?limit=100")
        assert status == 200, body
        listed = {job["id"] for job in json.loads(body)["jobs"]}
        assert {job["id"] for job in jobs} <= listed


def test_job_output_streams_through_nginx_unbuffered(stack):
    job = create(stack, ["sh", "-c", "echo one; sleep 1.5; echo two"])
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    start = time.monotonic()
    conn.request("GET", f"/jobs/{job['id']}/output")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("application/x-ndjson")
    first = json.loads(response.readline())
    first_at = time.monotonic() - start
    first.pop("t", None)  # the time of a chunk sent live
    assert first == {"stream": "stdout", "data": "one\n"}
    assert first_at < 1.0, f"first chunk after {first_at:.2f}s: buffered by nginx?"
    lines = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    conn.close()
    assert {"stream": "stdout", "data": "two\n"} in [
        {k: v for k, v in line.items() if k != "t"} for line in lines]
    assert lines[-1]["state"] == "exited"


def test_job_cancel_through_nginx(stack):
    job = create(stack, ["sleep", "30"])
    status, _, body = stack.call("DELETE", f"/jobs/{job['id']}")
    assert status == 200, body
    cancelled = json.loads(body)
    assert cancelled["state"] == "cancelled"
    assert cancelled["status"] == -9


def test_unknown_job_is_a_json_404(stack):
    owner = stack.ports[0]
    for path in (f"/jobs/{owner}.doesnotexist", "/jobs/12345.doesnotexist"):
        status, headers, body = stack.call("GET", path)
        assert status == 404
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(body)["error"] == "job_not_found"


def test_a_stopped_owners_finished_job_is_answered_by_another_instance(stack):
    # The job's upstream has the other three as backups, and they share its job index.
    job = create(stack, ["echo", "backup"])
    owner = job["id"].split(".", 1)[0]
    assert wait_until(lambda: json.loads(stack.call("GET", f"/jobs/{job['id']}")[2])["state"]
                      == "exited", 10)
    time.sleep(0.5)  # written (the store batches writes for 50 ms)
    stack.ctl("stop", f"taskrunner:taskrunner_{owner}")
    try:
        assert stack.health(int(owner)) is None
        status, _, body = stack.call("GET", f"/jobs/{job['id']}")
        assert status == 200, body
        assert json.loads(body)["stdout"] == "backup\n"
    finally:
        stack.ctl("start", f"taskrunner:taskrunner_{owner}")
    assert wait_until(lambda: stack.health(int(owner)), 10)


def test_finished_jobs_survive_a_rolling_restart(stack):
    job = create(stack, ["echo", "kept"])
    owner = int(job["id"].split(".", 1)[0])
    assert os.path.exists(os.path.join(stack.run_dir, "state", "jobs.sqlite3"))
    time.sleep(0.5)  # finished and written (the store batches writes for 50 ms)
    old_pid = stack.health(owner)["pid"]
    assert stack.script("reload").returncode == 0
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        health = stack.health(owner)
        if health and health["pid"] != old_pid:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the owner was not restarted")
    status, _, body = stack.call("GET", f"/jobs/{job['id']}")
    assert status == 200, body
    kept = json.loads(body)
    assert kept["state"] == "exited" and kept["stdout"] == "kept\n"


def test_the_run_directory_is_the_stacks_alone(stack):
    create(stack, ["echo", "a caller's output"])
    root = os.geteuid() == 0
    modes = {}
    for directory, dirs, files in os.walk(stack.run_dir):
        dirs[:] = [d for d in dirs if d != "nginx"]  # nobody's own: nginx's workers write there
        for name in [*dirs, *files]:
            path = os.path.join(directory, name)
            modes[os.path.relpath(path, stack.run_dir)] = stat.S_IMODE(os.lstat(path).st_mode)
    assert {"state/jobs.sqlite3", "log/taskrunner_19085.log", "supervisord.conf",
            "supervisor.sock", "nginx.conf"} <= set(modes), modes
    assert not {path: mode for path, mode in modes.items() if mode & 0o077}
    assert stat.S_IMODE(os.stat(stack.run_dir).st_mode) == (0o711 if root else 0o700)
    if not root:
        return
    nobody = pwd.getpwnam("nobody")  # the user commands run as with --user nobody
    files = ["state/jobs.sqlite3", "log/taskrunner_19085.log", "supervisord.conf",
             "nginx.conf"]
    tried = subprocess.run(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
         "sh", "-c", f"ls {stack.run_dir} && echo listed; "
         + "; ".join(f"cat {stack.run_dir}/{name} > /dev/null && echo read {name}"
                     for name in files)],
        cwd="/", capture_output=True, text=True, timeout=30)
    assert tried.stdout == "", tried.stdout
    assert tried.stderr.count("Permission denied") == 1 + len(files), tried.stderr

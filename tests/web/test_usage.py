"""What a command cost, as a caller sees it: ``usage`` in /run results, jobs, the final
event of the output stream and the store; sandboxed and not, with cgroup limits and without;
the wait behind a full --max-running; the histograms of /metrics."""

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import sqlite3
import time
from dataclasses import replace

import pytest
from conftest import with_config
from helpers import PY, submit, wait_done
from test_metrics import sample, scrape

from taskrunner.config import Config

MIB = 1 << 20
# About 0.3 s of user CPU: spins on its own CPU clock, read once per 10,000 turns.
BUSY = [PY, "-c", "import time\nt = time.process_time()\n"
        "while time.process_time() - t < 0.3:\n    for _ in range(10000): pass"]
# Touches every page of 64 MiB (a bytes object the multiplication fills).
TOUCH_64 = [PY, "-c", "b = b'x' * (64 << 20); print(len(b))"]

MISSING = [c for c in ("memory", "pids", "cpu", "cpuacct")
           if not os.path.isdir(f"/sys/fs/cgroup/{c}")]
needs_v1 = pytest.mark.skipif(
    (bool(MISSING) or os.geteuid() != 0) and not os.environ.get("CI"),
    reason=f"needs root and cgroup v1 memory, pids, cpu and cpuacct (missing: {MISSING})")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None and not os.environ.get("CI"),
                                 reason="bubblewrap (bwrap) is not installed: scripts/install")


def assert_busy(usage):
    # Loose: the loop stops at 0.3 s of its own CPU; start-up adds a little.
    assert 0.2 <= usage["cpu_user"] <= 2.0, usage
    assert 0.28 <= usage["cpu_user"] + usage["cpu_system"] <= 2.5, usage


@pytest.mark.gen_test(timeout=30)
async def test_run_says_what_a_busy_loop_cost_and_metrics_count_it(instance):
    code, body = await instance.run({"args": BUSY})
    assert code == 200 and body["status"] == 0
    assert_busy(body["usage"])
    assert body["usage"]["queued"] == 0.0
    assert "memory_peak" not in body["usage"] and "cpu_total" not in body["usage"]
    text = await scrape(instance)
    assert sample(text, "taskrunner_command_cpu_seconds_count") == 1
    assert sample(text, "taskrunner_command_cpu_seconds_sum") >= 0.28
    assert sample(text, "taskrunner_command_cpu_seconds_bucket", le="0.1") == 0
    assert sample(text, "taskrunner_command_memory_peak_bytes_count") == 1
    assert sample(text, "taskrunner_command_memory_peak_bytes_sum") == body["usage"]["max_rss"]


@pytest.mark.gen_test(timeout=30)
async def test_a_command_that_cannot_start_has_no_usage(instance):
    code, body = await instance.run({"args": ["/nonexistent/program"]})
    assert code == 422 and "usage" not in body


@pytest.fixture
def config(tmp_path):
    """This module's instances keep their jobs in a job index (tests that name a config of
    their own do not)."""
    return replace(Config(port=0, grace=2.0), state_dir=str(tmp_path / "state"))


@pytest.mark.gen_test(timeout=30)
async def test_a_job_keeps_its_usage_in_get_the_final_stream_event_and_the_store(
        instance, tmp_path):
    state_dir = tmp_path / "state"
    job = await submit(instance, {"args": BUSY})
    assert job["usage"] is None  # running: nothing to say yet
    response = await instance.request("GET", f"/jobs/{job['id']}/output")
    final = json.loads(response.body.decode().splitlines()[-1])
    assert final["state"] == "exited"
    assert_busy(final["usage"])
    done = await wait_done(instance, job["id"])
    assert done["usage"] == final["usage"]

    def stored():
        with contextlib.closing(sqlite3.connect(state_dir / "jobs.sqlite3")) as db:
            row = db.execute("SELECT usage FROM jobs WHERE id = ?", (job["id"],)).fetchone()
        return None if row is None or row[0] is None else json.loads(row[0])

    deadline = time.monotonic() + 10
    while stored() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # the store's writer thread batches its writes
    assert stored() == final["usage"]


@pytest.mark.gen_test(timeout=30)
@with_config(max_running=1)
async def test_a_request_queued_behind_a_full_max_running_says_how_long_it_waited(instance):
    blocker = await submit(instance, {"args": ["sleep", "0.6"]})
    assert blocker["state"] == "running"
    never = await submit(instance, {"args": ["true"]})
    assert never["state"] == "queued"
    response = await instance.request("DELETE", f"/jobs/{never['id']}")
    never = json.loads(response.body)
    assert never["state"] == "cancelled" and never["usage"] is None  # it never started
    code, body = await instance.run({"args": ["true"]})
    assert code == 200
    # It waited for the blocker's whole run (less what had passed before it asked).
    assert 0.5 <= body["usage"]["queued"] <= 5.0, body["usage"]
    done = await wait_done(instance, blocker["id"])
    assert done["usage"]["queued"] == 0.0
    text = await scrape(instance)
    assert sample(text, "taskrunner_command_queue_wait_seconds_count") == 2  # and the job's
    assert sample(text, "taskrunner_command_queue_wait_seconds_sum") >= 0.5


@needs_bwrap
@pytest.mark.gen_test(timeout=30)
@with_config(sandbox=True)
async def test_a_sandboxed_commands_rusage_is_bubblewraps_own_as_documented(instance):
    # The reaped child is bwrap; the sandbox's pid 1 (bwrap's too) reaps the command, and
    # nobody waits for that pid 1: the command's CPU is in no rusage the instance gets
    # (docs/api.md says so; a cgroup limit counts it, as the test below shows).
    code, body = await instance.run({"args": BUSY})
    assert code == 200 and body["status"] == 0, body
    usage = body["usage"]
    assert usage["cpu_user"] + usage["cpu_system"] < 0.2 and usage["max_rss"] > 0, usage


@needs_v1
@pytest.mark.gen_test(timeout=30)
@with_config(memory_max=512)
async def test_with_cgroup_limits_the_tree_is_counted_even_what_left_the_group(instance):
    # The busy loop runs daemonised (setsid -f: a new session, its parent gone at once):
    # nobody waits for it, so the rusage cannot see it; the cgroup does. The shell waits
    # long enough for the loop to end: the cgroup's kill at its exit would end it early.
    escape = f"setsid -f {shlex.join(BUSY)}; sleep 1.2"
    code, body = await instance.run({"args": ["sh", "-c", escape], "timeout": 10})
    assert code == 200, body
    usage = body["usage"]
    assert usage["cpu_user"] < 0.2, usage  # not waited for by sh: not in its rusage
    assert usage["cpu_total"] >= 0.28, usage
    # Touch 64 MiB: the cgroup's peak and the rusage's both see it; a reused cgroup starts
    # from zero again (the busy loop's command ran in it before).
    code, body = await instance.run({"args": TOUCH_64})
    assert code == 200 and body["stdout"] == f"{64 * MIB}\n", body
    usage = body["usage"]
    assert usage["memory_peak"] >= 64 * MIB and usage["max_rss"] >= 64 * MIB, usage
    pool = instance.ctx.launcher.cgroups
    made = pool.made
    code, body = await instance.run({"args": ["true"]})
    assert pool.made == made  # the cgroup was reused: its counters were reset for it
    assert body["usage"]["memory_peak"] < 32 * MIB, body["usage"]
    assert body["usage"]["cpu_total"] < 0.1, body["usage"]


@needs_v1
@needs_bwrap
@pytest.mark.gen_test(timeout=30)
@with_config(memory_max=512, sandbox=True)
async def test_a_sandboxed_command_in_a_cgroup_is_counted_by_the_cgroup(instance):
    code, body = await instance.run({"args": BUSY})
    assert code == 200 and body["status"] == 0, body
    assert 0.28 <= body["usage"]["cpu_total"] <= 2.5, body["usage"]
    code, body = await instance.run({"args": TOUCH_64})
    assert code == 200 and body["stdout"] == f"{64 * MIB}\n", body
    assert body["usage"]["memory_peak"] >= 64 * MIB, body["usage"]
